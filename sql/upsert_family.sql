-- Generated from the entity spec by `python -m patient_etl.target.ddl`, not by hand.
-- Publish runs it per batch: incoming_/outcome_ are its temporary tables. The same on SQLite.
INSERT INTO family (
    family_id, family_name, phone, email, addresses, extra, created_batch_id, updated_batch_id,
    created_at, updated_at)
SELECT s.family_id, s.family_name, s.phone, s.email, s.addresses, s.extra, :batch_id, :batch_id, :now, :now
FROM incoming_family s JOIN outcome_family o ON o.rid = s.rid
WHERE o.status = 'Created'
ORDER BY s.family_id;

UPDATE family SET
    family_name = coalesce(u.family_name, family.family_name),
    phone = coalesce(u.phone, family.phone),
    email = coalesce(u.email, family.email),
    addresses = coalesce(u.addresses, family.addresses),
    extra = coalesce(u.extra, family.extra),
    updated_batch_id = :batch_id,
    updated_at = :now
FROM (SELECT s.* FROM incoming_family s JOIN outcome_family o ON o.rid = s.rid
WHERE o.status = 'Updated') u
WHERE family.family_id = u.family_id;
