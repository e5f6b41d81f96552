-- Generated from the entity spec by `python -m patient_etl.target.ddl`, not by hand.
-- Publish runs it per batch: incoming_/outcome_ are its temporary tables. Into an empty table the rows
-- are loaded in key order and inserted without the ORDER BY. The same on SQLite, except that its insert
-- joins each row to its outcome (Target.upsert_statements).
INSERT INTO claim (
    claim_id, member_id, provider_id, service_date, billed_amount, care_id, payer_name, procedure_codes,
    diagnosis_codes, status, extra, created_batch_id, updated_batch_id, created_at, updated_at)
SELECT s.claim_id, s.member_id, s.provider_id, s.service_date, s.billed_amount, s.care_id, s.payer_name,
    s.procedure_codes, s.diagnosis_codes, s.status, s.extra,
    :batch_id, :batch_id, :now, :now
FROM incoming_claim s
WHERE NOT EXISTS (SELECT 1 FROM outcome_claim o WHERE o.rid = s.rid AND o.status <> 'Created')
ORDER BY s.claim_id;

UPDATE claim SET
    member_id = coalesce(u.member_id, claim.member_id),
    provider_id = coalesce(u.provider_id, claim.provider_id),
    service_date = coalesce(u.service_date, claim.service_date),
    billed_amount = coalesce(u.billed_amount, claim.billed_amount),
    care_id = coalesce(u.care_id, claim.care_id),
    payer_name = coalesce(u.payer_name, claim.payer_name),
    procedure_codes = coalesce(u.procedure_codes, claim.procedure_codes),
    diagnosis_codes = coalesce(u.diagnosis_codes, claim.diagnosis_codes),
    status = coalesce(u.status, claim.status),
    extra = coalesce(u.extra, claim.extra),
    updated_batch_id = :batch_id,
    updated_at = :now
FROM (SELECT s.claim_id, s.member_id, s.provider_id, s.service_date, s.billed_amount, s.care_id, s.payer_name,
    s.procedure_codes, s.diagnosis_codes, s.status, s.extra
FROM incoming_claim s JOIN outcome_claim o ON o.rid = s.rid
WHERE o.status = 'Updated') u
WHERE claim.claim_id = u.claim_id;
