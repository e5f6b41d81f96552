-- Generated from the entity spec by `python -m patient_etl.target.ddl`, not by hand.
-- Publish runs it per batch: incoming_/outcome_ are its temporary tables. Into an empty table the rows
-- are loaded in key order and inserted without the ORDER BY. The same on SQLite, except that its insert
-- joins each row to its outcome (Target.upsert_statements).
INSERT INTO provider (
    provider_id, provider_name, npi, taxonomy_code, specialty, organization_name, phone, extra,
    addresses, created_batch_id, updated_batch_id, created_at, updated_at)
SELECT s.provider_id, s.provider_name, s.npi, s.taxonomy_code, s.specialty, s.organization_name, s.phone,
    s.extra,
    CASE WHEN (s.addresses LIKE '[null%%' OR s.addresses LIKE '%%,null%%' OR s.addresses LIKE '%%, null%%') THEN (SELECT json_agg(CASE WHEN json_typeof(i.v) <> 'null' THEN i.v ELSE o.v END ORDER BY coalesce(i.n, o.n))::text FROM json_array_elements(coalesce(s.addresses, '[]')::json) WITH ORDINALITY AS i(v, n) FULL JOIN json_array_elements(coalesce(NULL, '[]')::json) WITH ORDINALITY AS o(v, n) ON o.n = i.n WHERE CASE WHEN json_typeof(i.v) <> 'null' THEN i.v ELSE o.v END IS NOT NULL AND json_typeof(CASE WHEN json_typeof(i.v) <> 'null' THEN i.v ELSE o.v END) <> 'null') ELSE s.addresses END AS addresses,
    :batch_id, :batch_id, :now, :now
FROM incoming_provider s
WHERE NOT EXISTS (SELECT 1 FROM outcome_provider o WHERE o.rid = s.rid AND o.status <> 'Created')
ORDER BY s.provider_id;

UPDATE provider SET
    provider_name = coalesce(u.provider_name, provider.provider_name),
    npi = coalesce(u.npi, provider.npi),
    taxonomy_code = coalesce(u.taxonomy_code, provider.taxonomy_code),
    specialty = coalesce(u.specialty, provider.specialty),
    organization_name = coalesce(u.organization_name, provider.organization_name),
    phone = coalesce(u.phone, provider.phone),
    addresses = coalesce(u.addresses, provider.addresses),
    extra = coalesce(u.extra, provider.extra),
    updated_batch_id = :batch_id,
    updated_at = :now
FROM (SELECT s.provider_id, s.provider_name, s.npi, s.taxonomy_code, s.specialty, s.organization_name, s.phone,
    s.extra,
    CASE WHEN (s.addresses LIKE '[null%%' OR s.addresses LIKE '%%,null%%' OR s.addresses LIKE '%%, null%%') THEN (SELECT json_agg(CASE WHEN json_typeof(i.v) <> 'null' THEN i.v ELSE o.v END ORDER BY coalesce(i.n, o.n))::text FROM json_array_elements(coalesce(s.addresses, '[]')::json) WITH ORDINALITY AS i(v, n) FULL JOIN json_array_elements(coalesce(NULL, '[]')::json) WITH ORDINALITY AS o(v, n) ON o.n = i.n WHERE CASE WHEN json_typeof(i.v) <> 'null' THEN i.v ELSE o.v END IS NOT NULL AND json_typeof(CASE WHEN json_typeof(i.v) <> 'null' THEN i.v ELSE o.v END) <> 'null') ELSE s.addresses END AS addresses
FROM incoming_provider s JOIN outcome_provider o ON o.rid = s.rid
WHERE o.status = 'Updated') u
WHERE provider.provider_id = u.provider_id;
