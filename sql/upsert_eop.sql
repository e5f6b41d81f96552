-- Generated from the entity spec by `python -m patient_etl.target.ddl`, not by hand.
-- Publish runs it per batch: incoming_/outcome_ are its temporary tables. The same on SQLite.
INSERT INTO eop (
    eop_id, claim_id, payment_date, paid_amount, patient_responsibility, adjustment_amount,
    adjustment_codes, check_number, extra, created_batch_id, updated_batch_id, created_at,
    updated_at)
SELECT s.eop_id, s.claim_id, s.payment_date, s.paid_amount, s.patient_responsibility, s.adjustment_amount,
    s.adjustment_codes, s.check_number, s.extra, :batch_id, :batch_id, :now, :now
FROM incoming_eop s JOIN outcome_eop o ON o.rid = s.rid
WHERE o.status IN ('Created', 'Updated')
ON CONFLICT (eop_id) DO UPDATE SET
    claim_id = coalesce(excluded.claim_id, eop.claim_id),
    payment_date = coalesce(excluded.payment_date, eop.payment_date),
    paid_amount = coalesce(excluded.paid_amount, eop.paid_amount),
    patient_responsibility = coalesce(excluded.patient_responsibility, eop.patient_responsibility),
    adjustment_amount = coalesce(excluded.adjustment_amount, eop.adjustment_amount),
    adjustment_codes = coalesce(excluded.adjustment_codes, eop.adjustment_codes),
    check_number = coalesce(excluded.check_number, eop.check_number),
    extra = coalesce(excluded.extra, eop.extra),
    updated_batch_id = excluded.updated_batch_id,
    updated_at = excluded.updated_at;
