"""Linkage records: one flat row per member, with the compared fields in a comparable form.

The batch's normalized `member` table and the target's members have the same shape (names, typed
birth date, `addresses`/`emails`/`phones` as JSON lists). This module turns either into records with
pure columns (no expressions left for Splink to translate), so the DuckDB and Spark backends compare
exactly the same values. SSNs take part only as a keyed hash: `ssn_hash`, never the number.
"""

from __future__ import annotations

import hashlib
import hmac
import re

import duckdb

# The compared columns, in the order Splink sees them; `unique_id` first.
RECORD_COLUMNS = (
    "unique_id", "first_name", "last_name", "birth_date", "birth_year", "sex", "address_line1", "zip",
    "zip3", "phone", "email", "email_user", "ssn_hash",
)
# Carried beside the records (never given to Splink): who a record is, for the output and exclusions.
IDENTITY_COLUMNS = ("unique_id", "row_number", "member_id", "match_key")

_NAME = "nullif(regexp_replace(lower(strip_accents(CAST({c} AS VARCHAR))), '[^a-z]', '', 'g'), '')"
_STREET_WORDS = {"street": "st", "avenue": "ave", "road": "rd", "drive": "dr", "lane": "ln", "court": "ct",
                 "place": "pl", "boulevard": "blvd", "apartment": "apt", "north": "n", "south": "s",
                 "east": "e", "west": "w"}


def ssn_hash(ssn: str | None, key: bytes) -> str | None:
    """The keyed hash an SSN is matched by: HMAC-SHA256 (key `PATIENT_ETL_HASH_KEY`) of its 9 digits, hex."""
    digits = re.sub(r"[^0-9]", "", ssn or "")
    if len(digits) != 9:
        return None
    return hmac.new(key, digits.encode(), hashlib.sha256).hexdigest()


def _address_sql(expr: str) -> str:
    text = f"trim(regexp_replace(lower(strip_accents({expr})), '[^a-z0-9]+', ' ', 'g'))"
    for word, short in _STREET_WORDS.items():
        text = f"regexp_replace({text}, '\\b{word}\\b', '{short}', 'g')"
    return f"nullif({text}, '')"


def member_records_sql(con: duckdb.DuckDBPyConnection, source: str, side: str) -> str:
    """SQL selecting linkage records (RECORD_COLUMNS + IDENTITY_COLUMNS) from a member-shaped table.

    `side` is "batch" (unique_id = rid, row_number kept) or "target" (unique_id negative, numbered in
    member_id order; no row number). Columns the table lacks (`ssn_hash` before the PHI work lands,
    `match_key`, a group column) read as NULL.
    """
    have = {r[0] for r in con.execute(f"SELECT * FROM {source} LIMIT 0").description}

    def col(name: str, cast: str = "VARCHAR") -> str:
        return f"CAST({name} AS {cast})" if name in have else f"CAST(NULL AS {cast})"

    address = f"CAST({col('addresses')} AS JSON)"
    line1 = _address_sql(f"json_extract_string({address}, '$[0].address_line1')")
    zip5 = f"nullif(left(regexp_replace(json_extract_string({address}, '$[0].zip'), '[^0-9]', '', 'g'), 5), '')"
    phone = (f"nullif(right(regexp_replace(json_extract_string(CAST({col('phones')} AS JSON), '$[0]'), "
             f"'[^0-9]', '', 'g'), 10), '')")
    email = f"nullif(lower(trim(json_extract_string(CAST({col('emails')} AS JSON), '$[0]'))), '')"
    if side == "batch":
        unique_id, row_number = "CAST(rid AS BIGINT)", col("row_number", "BIGINT")
    elif side == "target":
        unique_id, row_number = "-row_number() OVER (ORDER BY member_id)", "CAST(NULL AS BIGINT)"
    else:
        raise ValueError("side must be 'batch' or 'target'")
    birth = f"CAST(try_cast({col('birth_date')} AS DATE) AS VARCHAR)"
    return f"""
        SELECT unique_id, first_name, last_name, birth_date, left(birth_date, 4) AS birth_year, sex,
               address_line1, zip, left(zip, 3) AS zip3, phone, email,
               nullif(split_part(email, '@', 1), '') AS email_user, ssn_hash,
               row_number, member_id, match_key
        FROM (
            SELECT {unique_id} AS unique_id,
                   {_NAME.format(c=col('first_name'))} AS first_name,
                   {_NAME.format(c=col('last_name'))} AS last_name,
                   {birth} AS birth_date,
                   CASE WHEN upper({col('sex')}) IN ('M', 'F', 'O') THEN upper({col('sex')}) END AS sex,
                   {line1} AS address_line1,
                   CASE WHEN length({zip5}) = 5 THEN {zip5} END AS zip,
                   CASE WHEN length({phone}) = 10 THEN {phone} END AS phone,
                   {email} AS email,
                   nullif(lower({col('ssn_hash')}), '') AS ssn_hash,
                   {row_number} AS row_number,
                   {col('member_id')} AS member_id,
                   {col('match_key')} AS match_key
            FROM {source}
        )"""
