-- Generated from the entity spec by `python -m patient_etl.target.ddl`, not by hand.
-- Publish runs it per batch: incoming_/outcome_ are its temporary tables. The same on SQLite.
INSERT INTO provider (
    provider_id, provider_name, npi, taxonomy_code, specialty, organization_name, phone, addresses,
    extra, created_batch_id, updated_batch_id, created_at, updated_at)
SELECT s.provider_id, s.provider_name, s.npi, s.taxonomy_code, s.specialty, s.organization_name, s.phone,
    s.addresses, s.extra, :batch_id, :batch_id, :now, :now
FROM incoming_provider s JOIN outcome_provider o ON o.rid = s.rid
WHERE o.status IN ('Created', 'Updated')
ON CONFLICT (provider_id) DO UPDATE SET
    provider_name = coalesce(excluded.provider_name, provider.provider_name),
    npi = coalesce(excluded.npi, provider.npi),
    taxonomy_code = coalesce(excluded.taxonomy_code, provider.taxonomy_code),
    specialty = coalesce(excluded.specialty, provider.specialty),
    organization_name = coalesce(excluded.organization_name, provider.organization_name),
    phone = coalesce(excluded.phone, provider.phone),
    addresses = coalesce(excluded.addresses, provider.addresses),
    extra = coalesce(excluded.extra, provider.extra),
    updated_batch_id = excluded.updated_batch_id,
    updated_at = excluded.updated_at;
