-- Generated from the entity spec by `python -m patient_etl.target.ddl`, not by hand.
-- Publish runs it per batch: incoming_/outcome_ are its temporary tables. Into an empty table the rows
-- are loaded in key order and inserted without the ORDER BY. The same on SQLite, except that its insert
-- joins each row to its outcome (Target.upsert_statements).
INSERT INTO family (
    family_id, family_name, phone, email, extra, addresses, created_batch_id, updated_batch_id,
    created_at, updated_at)
SELECT s.family_id, s.family_name, s.phone, s.email, s.extra,
    CASE WHEN (s.addresses LIKE '[null%%' OR s.addresses LIKE '%%,null%%' OR s.addresses LIKE '%%, null%%') THEN (SELECT json_agg(CASE WHEN json_typeof(i.v) <> 'null' THEN i.v ELSE o.v END ORDER BY coalesce(i.n, o.n))::text FROM json_array_elements(coalesce(s.addresses, '[]')::json) WITH ORDINALITY AS i(v, n) FULL JOIN json_array_elements(coalesce(NULL, '[]')::json) WITH ORDINALITY AS o(v, n) ON o.n = i.n WHERE CASE WHEN json_typeof(i.v) <> 'null' THEN i.v ELSE o.v END IS NOT NULL AND json_typeof(CASE WHEN json_typeof(i.v) <> 'null' THEN i.v ELSE o.v END) <> 'null') ELSE s.addresses END AS addresses,
    :batch_id, :batch_id, :now, :now
FROM incoming_family s
WHERE NOT EXISTS (SELECT 1 FROM outcome_family o WHERE o.rid = s.rid AND o.status <> 'Created')
ORDER BY s.family_id;

UPDATE family SET
    family_name = coalesce(u.family_name, family.family_name),
    phone = coalesce(u.phone, family.phone),
    email = coalesce(u.email, family.email),
    addresses = coalesce(u.addresses, family.addresses),
    extra = coalesce(u.extra, family.extra),
    updated_batch_id = :batch_id,
    updated_at = :now
FROM (SELECT s.family_id, s.family_name, s.phone, s.email, s.extra,
    CASE WHEN (s.addresses LIKE '[null%%' OR s.addresses LIKE '%%,null%%' OR s.addresses LIKE '%%, null%%') THEN (SELECT json_agg(CASE WHEN json_typeof(i.v) <> 'null' THEN i.v ELSE o.v END ORDER BY coalesce(i.n, o.n))::text FROM json_array_elements(coalesce(s.addresses, '[]')::json) WITH ORDINALITY AS i(v, n) FULL JOIN json_array_elements(coalesce(NULL, '[]')::json) WITH ORDINALITY AS o(v, n) ON o.n = i.n WHERE CASE WHEN json_typeof(i.v) <> 'null' THEN i.v ELSE o.v END IS NOT NULL AND json_typeof(CASE WHEN json_typeof(i.v) <> 'null' THEN i.v ELSE o.v END) <> 'null') ELSE s.addresses END AS addresses
FROM incoming_family s JOIN outcome_family o ON o.rid = s.rid
WHERE o.status = 'Updated') u
WHERE family.family_id = u.family_id;
