-- Generated from the entity spec by `python -m patient_etl.target.ddl`, not by hand.
-- Publish runs it per batch: incoming_/outcome_ are its temporary tables. The same on SQLite.
INSERT INTO member (
    member_id, first_name, middle_name, last_name, birth_date, sex, ssn, family_id, relationship,
    ssn_hash, addresses, emails, phones, extra, match_key, created_batch_id, updated_batch_id,
    created_at, updated_at)
SELECT s.member_id, s.first_name, s.middle_name, s.last_name, s.birth_date, s.sex, s.ssn, s.family_id,
    s.relationship, s.ssn_hash, s.addresses, s.emails, s.phones, s.extra, s.match_key, :batch_id,
    :batch_id, :now, :now
FROM incoming_member s JOIN outcome_member o ON o.rid = s.rid
WHERE o.status = 'Created'
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
FROM (SELECT s.* FROM incoming_member s JOIN outcome_member o ON o.rid = s.rid
WHERE o.status = 'Updated') u
WHERE member.member_id = u.member_id;
