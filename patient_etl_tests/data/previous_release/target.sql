-- The target DDL of the release before schema migration (sql/ at 6ac7008), as a deployed target has it,
-- except that member.relationship is missing, as if the spec had gained it since.
CREATE TABLE IF NOT EXISTS import_batch (
    batch_id TEXT PRIMARY KEY,
    source TEXT NOT NULL,
    file_names TEXT NOT NULL,
    sha256 TEXT,
    status TEXT NOT NULL,
    reason TEXT,
    rows_total BIGINT NOT NULL DEFAULT 0,
    created BIGINT NOT NULL DEFAULT 0,
    updated BIGINT NOT NULL DEFAULT 0,
    unchanged BIGINT NOT NULL DEFAULT 0,
    errored BIGINT NOT NULL DEFAULT 0,
    results_file TEXT,
    registered_at TIMESTAMPTZ,
    finished_at TIMESTAMPTZ
);

CREATE TABLE IF NOT EXISTS import_row (
    batch_id TEXT NOT NULL,
    file_index INTEGER NOT NULL,
    row_number BIGINT NOT NULL,
    entity TEXT NOT NULL,
    external_id TEXT,
    status TEXT NOT NULL,
    messages TEXT,
    changed_fields TEXT,
    PRIMARY KEY (batch_id, entity, file_index, row_number)
);
CREATE TABLE IF NOT EXISTS family (
    family_id TEXT PRIMARY KEY,
    family_name TEXT,
    phone TEXT,
    email TEXT,
    addresses TEXT,
    extra TEXT,
    created_batch_id TEXT,
    updated_batch_id TEXT,
    created_at TIMESTAMPTZ,
    updated_at TIMESTAMPTZ
);
CREATE TABLE IF NOT EXISTS member (
    member_id TEXT PRIMARY KEY,
    first_name TEXT,
    middle_name TEXT,
    last_name TEXT,
    birth_date DATE,
    sex TEXT,
    ssn TEXT,
    family_id TEXT,
    addresses TEXT,
    emails TEXT,
    phones TEXT,
    extra TEXT,
    match_key TEXT,
    created_batch_id TEXT,
    updated_batch_id TEXT,
    created_at TIMESTAMPTZ,
    updated_at TIMESTAMPTZ,
    FOREIGN KEY (family_id) REFERENCES family (family_id)
);
CREATE INDEX IF NOT EXISTS member_match_key ON member (match_key);
CREATE TABLE IF NOT EXISTS provider (
    provider_id TEXT PRIMARY KEY,
    provider_name TEXT,
    npi TEXT,
    taxonomy_code TEXT,
    specialty TEXT,
    organization_name TEXT,
    phone TEXT,
    addresses TEXT,
    extra TEXT,
    created_batch_id TEXT,
    updated_batch_id TEXT,
    created_at TIMESTAMPTZ,
    updated_at TIMESTAMPTZ
);
CREATE TABLE IF NOT EXISTS care (
    care_id TEXT PRIMARY KEY,
    member_id TEXT,
    provider_id TEXT,
    start_date DATE,
    end_date DATE,
    care_type TEXT,
    diagnosis_codes TEXT,
    description TEXT,
    extra TEXT,
    created_batch_id TEXT,
    updated_batch_id TEXT,
    created_at TIMESTAMPTZ,
    updated_at TIMESTAMPTZ,
    FOREIGN KEY (member_id) REFERENCES member (member_id),
    FOREIGN KEY (provider_id) REFERENCES provider (provider_id)
);
CREATE TABLE IF NOT EXISTS claim (
    claim_id TEXT PRIMARY KEY,
    member_id TEXT,
    provider_id TEXT,
    service_date DATE,
    billed_amount NUMERIC(14,2),
    care_id TEXT,
    payer_name TEXT,
    procedure_codes TEXT,
    diagnosis_codes TEXT,
    status TEXT,
    extra TEXT,
    created_batch_id TEXT,
    updated_batch_id TEXT,
    created_at TIMESTAMPTZ,
    updated_at TIMESTAMPTZ,
    FOREIGN KEY (member_id) REFERENCES member (member_id),
    FOREIGN KEY (provider_id) REFERENCES provider (provider_id),
    FOREIGN KEY (care_id) REFERENCES care (care_id)
);
CREATE TABLE IF NOT EXISTS eop (
    eop_id TEXT PRIMARY KEY,
    claim_id TEXT,
    payment_date DATE,
    paid_amount NUMERIC(14,2),
    patient_responsibility NUMERIC(14,2),
    adjustment_amount NUMERIC(14,2),
    adjustment_codes TEXT,
    check_number TEXT,
    extra TEXT,
    created_batch_id TEXT,
    updated_batch_id TEXT,
    created_at TIMESTAMPTZ,
    updated_at TIMESTAMPTZ,
    FOREIGN KEY (claim_id) REFERENCES claim (claim_id)
);
