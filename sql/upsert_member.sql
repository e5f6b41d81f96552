-- Generated from the entity spec by `python -m patient_etl.target.ddl`, not by hand.
-- Publish runs it per batch: incoming_/outcome_ are its temporary tables. Into an empty table the rows
-- are loaded in key order and inserted without the ORDER BY. The same on SQLite, except that its insert
-- joins each row to its outcome (Target.upsert_statements).
INSERT INTO member (
    member_id, first_name, middle_name, last_name, birth_date, sex, ssn, family_id, relationship,
    ssn_hash, extra, match_key, addresses, emails, phones, created_batch_id, updated_batch_id,
    created_at, updated_at)
SELECT s.member_id, s.first_name, s.middle_name, s.last_name, s.birth_date, s.sex, s.ssn, s.family_id,
    s.relationship, s.ssn_hash, s.extra, s.match_key,
    CASE WHEN (s.addresses LIKE '[null%%' OR s.addresses LIKE '%%,null%%' OR s.addresses LIKE '%%, null%%') THEN (SELECT json_agg(CASE WHEN json_typeof(i.v) <> 'null' THEN i.v ELSE o.v END ORDER BY coalesce(i.n, o.n))::text FROM json_array_elements(coalesce(s.addresses, '[]')::json) WITH ORDINALITY AS i(v, n) FULL JOIN json_array_elements(coalesce(NULL, '[]')::json) WITH ORDINALITY AS o(v, n) ON o.n = i.n WHERE CASE WHEN json_typeof(i.v) <> 'null' THEN i.v ELSE o.v END IS NOT NULL AND json_typeof(CASE WHEN json_typeof(i.v) <> 'null' THEN i.v ELSE o.v END) <> 'null') ELSE s.addresses END AS addresses,
    CASE WHEN (s.emails LIKE '[null%%' OR s.emails LIKE '%%,null%%' OR s.emails LIKE '%%, null%%') THEN (SELECT json_agg(CASE WHEN json_typeof(i.v) <> 'null' THEN i.v ELSE o.v END ORDER BY coalesce(i.n, o.n))::text FROM json_array_elements(coalesce(s.emails, '[]')::json) WITH ORDINALITY AS i(v, n) FULL JOIN json_array_elements(coalesce(NULL, '[]')::json) WITH ORDINALITY AS o(v, n) ON o.n = i.n WHERE CASE WHEN json_typeof(i.v) <> 'null' THEN i.v ELSE o.v END IS NOT NULL AND json_typeof(CASE WHEN json_typeof(i.v) <> 'null' THEN i.v ELSE o.v END) <> 'null') ELSE s.emails END AS emails,
    CASE WHEN (s.phones LIKE '[null%%' OR s.phones LIKE '%%,null%%' OR s.phones LIKE '%%, null%%') THEN (SELECT json_agg(CASE WHEN json_typeof(i.v) <> 'null' THEN i.v ELSE o.v END ORDER BY coalesce(i.n, o.n))::text FROM json_array_elements(coalesce(s.phones, '[]')::json) WITH ORDINALITY AS i(v, n) FULL JOIN json_array_elements(coalesce(NULL, '[]')::json) WITH ORDINALITY AS o(v, n) ON o.n = i.n WHERE CASE WHEN json_typeof(i.v) <> 'null' THEN i.v ELSE o.v END IS NOT NULL AND json_typeof(CASE WHEN json_typeof(i.v) <> 'null' THEN i.v ELSE o.v END) <> 'null') ELSE s.phones END AS phones,
    :batch_id, :batch_id, :now, :now
FROM incoming_member s
WHERE NOT EXISTS (SELECT 1 FROM outcome_member o WHERE o.rid = s.rid AND o.status <> 'Created')
ORDER BY s.member_id;

UPDATE member SET
    first_name = coalesce(u.first_name, member.first_name),
    middle_name = coalesce(u.middle_name, member.middle_name),
    last_name = coalesce(u.last_name, member.last_name),
    birth_date = coalesce(u.birth_date, member.birth_date),
    sex = coalesce(u.sex, member.sex),
    ssn = coalesce(u.ssn, member.ssn),
    family_id = coalesce(u.family_id, member.family_id),
    relationship = coalesce(u.relationship, member.relationship),
    ssn_hash = coalesce(u.ssn_hash, member.ssn_hash),
    addresses = coalesce(u.addresses, member.addresses),
    emails = coalesce(u.emails, member.emails),
    phones = coalesce(u.phones, member.phones),
    extra = coalesce(u.extra, member.extra),
    match_key = coalesce(u.match_key, member.match_key),
    updated_batch_id = :batch_id,
    updated_at = :now
FROM (SELECT s.member_id, s.first_name, s.middle_name, s.last_name, s.birth_date, s.sex, s.ssn, s.family_id,
    s.relationship, s.ssn_hash, s.extra, s.match_key,
    CASE WHEN (s.addresses LIKE '[null%%' OR s.addresses LIKE '%%,null%%' OR s.addresses LIKE '%%, null%%') THEN (SELECT json_agg(CASE WHEN json_typeof(i.v) <> 'null' THEN i.v ELSE o.v END ORDER BY coalesce(i.n, o.n))::text FROM json_array_elements(coalesce(s.addresses, '[]')::json) WITH ORDINALITY AS i(v, n) FULL JOIN json_array_elements(coalesce(NULL, '[]')::json) WITH ORDINALITY AS o(v, n) ON o.n = i.n WHERE CASE WHEN json_typeof(i.v) <> 'null' THEN i.v ELSE o.v END IS NOT NULL AND json_typeof(CASE WHEN json_typeof(i.v) <> 'null' THEN i.v ELSE o.v END) <> 'null') ELSE s.addresses END AS addresses,
    CASE WHEN (s.emails LIKE '[null%%' OR s.emails LIKE '%%,null%%' OR s.emails LIKE '%%, null%%') THEN (SELECT json_agg(CASE WHEN json_typeof(i.v) <> 'null' THEN i.v ELSE o.v END ORDER BY coalesce(i.n, o.n))::text FROM json_array_elements(coalesce(s.emails, '[]')::json) WITH ORDINALITY AS i(v, n) FULL JOIN json_array_elements(coalesce(NULL, '[]')::json) WITH ORDINALITY AS o(v, n) ON o.n = i.n WHERE CASE WHEN json_typeof(i.v) <> 'null' THEN i.v ELSE o.v END IS NOT NULL AND json_typeof(CASE WHEN json_typeof(i.v) <> 'null' THEN i.v ELSE o.v END) <> 'null') ELSE s.emails END AS emails,
    CASE WHEN (s.phones LIKE '[null%%' OR s.phones LIKE '%%,null%%' OR s.phones LIKE '%%, null%%') THEN (SELECT json_agg(CASE WHEN json_typeof(i.v) <> 'null' THEN i.v ELSE o.v END ORDER BY coalesce(i.n, o.n))::text FROM json_array_elements(coalesce(s.phones, '[]')::json) WITH ORDINALITY AS i(v, n) FULL JOIN json_array_elements(coalesce(NULL, '[]')::json) WITH ORDINALITY AS o(v, n) ON o.n = i.n WHERE CASE WHEN json_typeof(i.v) <> 'null' THEN i.v ELSE o.v END IS NOT NULL AND json_typeof(CASE WHEN json_typeof(i.v) <> 'null' THEN i.v ELSE o.v END) <> 'null') ELSE s.phones END AS phones
FROM incoming_member s JOIN outcome_member o ON o.rid = s.rid
WHERE o.status = 'Updated') u
WHERE member.member_id = u.member_id;
