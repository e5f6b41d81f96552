-- Generated from the entity spec by `python -m patient_etl.target.ddl`, not by hand.
-- Publish runs it per batch: incoming_/outcome_ are its temporary tables. The same on SQLite.
INSERT INTO claim (
    claim_id, member_id, provider_id, service_date, billed_amount, care_id, payer_name, procedure_codes,
    diagnosis_codes, status, extra, created_batch_id, updated_batch_id, created_at, updated_at)
SELECT s.claim_id, s.member_id, s.provider_id, s.service_date, s.billed_amount, s.care_id, s.payer_name,
    s.procedure_codes, s.diagnosis_codes, s.status, s.extra, :batch_id, :batch_id, :now, :now
FROM incoming_claim s JOIN outcome_claim o ON o.rid = s.rid
WHERE o.status IN ('Created', 'Updated')
ON CONFLICT (claim_id) DO UPDATE SET
    member_id = coalesce(excluded.member_id, claim.member_id),
    provider_id = coalesce(excluded.provider_id, claim.provider_id),
    service_date = coalesce(excluded.service_date, claim.service_date),
    billed_amount = coalesce(excluded.billed_amount, claim.billed_amount),
    care_id = coalesce(excluded.care_id, claim.care_id),
    payer_name = coalesce(excluded.payer_name, claim.payer_name),
    procedure_codes = coalesce(excluded.procedure_codes, claim.procedure_codes),
    diagnosis_codes = coalesce(excluded.diagnosis_codes, claim.diagnosis_codes),
    status = coalesce(excluded.status, claim.status),
    extra = coalesce(excluded.extra, claim.extra),
    updated_batch_id = excluded.updated_batch_id,
    updated_at = excluded.updated_at;
