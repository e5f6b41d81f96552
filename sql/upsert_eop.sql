-- Generated from the entity spec by `python -m patient_etl.target.ddl`, not by hand.
-- Publish runs it per batch: incoming_/outcome_ are its temporary tables. Into an empty table the rows
-- are loaded in key order and inserted without the ORDER BY. The same on SQLite, except that its insert
-- joins each row to its outcome (Target.upsert_statements).
INSERT INTO eop (
    eop_id, claim_id, payment_date, paid_amount, patient_responsibility, adjustment_amount,
    adjustment_codes, check_number, extra, created_batch_id, updated_batch_id, created_at,
    updated_at)
SELECT s.eop_id, s.claim_id, s.payment_date, s.paid_amount, s.patient_responsibility, s.adjustment_amount,
    s.adjustment_codes, s.check_number, s.extra,
    :batch_id, :batch_id, :now, :now
FROM incoming_eop s
WHERE NOT EXISTS (SELECT 1 FROM outcome_eop o WHERE o.rid = s.rid AND o.status <> 'Created')
ORDER BY s.eop_id;

UPDATE eop SET
    claim_id = coalesce(u.claim_id, eop.claim_id),
    payment_date = coalesce(u.payment_date, eop.payment_date),
    paid_amount = coalesce(u.paid_amount, eop.paid_amount),
    patient_responsibility = coalesce(u.patient_responsibility, eop.patient_responsibility),
    adjustment_amount = coalesce(u.adjustment_amount, eop.adjustment_amount),
    adjustment_codes = coalesce(u.adjustment_codes, eop.adjustment_codes),
    check_number = coalesce(u.check_number, eop.check_number),
    extra = coalesce(u.extra, eop.extra),
    updated_batch_id = :batch_id,
    updated_at = :now
FROM (SELECT s.eop_id, s.claim_id, s.payment_date, s.paid_amount, s.patient_responsibility, s.adjustment_amount,
    s.adjustment_codes, s.check_number, s.extra
FROM incoming_eop s JOIN outcome_eop o ON o.rid = s.rid
WHERE o.status = 'Updated') u
WHERE eop.eop_id = u.eop_id;
