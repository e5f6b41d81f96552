-- Generated from the entity spec by `python -m patient_etl.target.ddl`, not by hand.
-- Publish runs it per batch: incoming_/outcome_ are its temporary tables. Into an empty table the rows
-- are loaded in key order and inserted without the ORDER BY. The same on SQLite, except that its insert
-- joins each row to its outcome (Target.upsert_statements).
INSERT INTO care (
    care_id, member_id, provider_id, start_date, end_date, care_type, diagnosis_codes, description,
    extra, created_batch_id, updated_batch_id, created_at, updated_at)
SELECT s.care_id, s.member_id, s.provider_id, s.start_date, s.end_date, s.care_type, s.diagnosis_codes,
    s.description, s.extra,
    :batch_id, :batch_id, :now, :now
FROM incoming_care s
WHERE NOT EXISTS (SELECT 1 FROM outcome_care o WHERE o.rid = s.rid AND o.status <> 'Created')
ORDER BY s.care_id;

UPDATE care SET
    member_id = coalesce(u.member_id, care.member_id),
    provider_id = coalesce(u.provider_id, care.provider_id),
    start_date = coalesce(u.start_date, care.start_date),
    end_date = coalesce(u.end_date, care.end_date),
    care_type = coalesce(u.care_type, care.care_type),
    diagnosis_codes = coalesce(u.diagnosis_codes, care.diagnosis_codes),
    description = coalesce(u.description, care.description),
    extra = coalesce(u.extra, care.extra),
    updated_batch_id = :batch_id,
    updated_at = :now
FROM (SELECT s.care_id, s.member_id, s.provider_id, s.start_date, s.end_date, s.care_type, s.diagnosis_codes,
    s.description, s.extra
FROM incoming_care s JOIN outcome_care o ON o.rid = s.rid
WHERE o.status = 'Updated') u
WHERE care.care_id = u.care_id;
