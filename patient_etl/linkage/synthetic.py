"""Deterministic synthetic members with planted near-duplicates, for the linkage tests and benchmark.

Made with DuckDB SQL: every random choice is `hash(person, seed, salt)`, so a table depends only on
its arguments. People get syllable names (skewed, so some names are common), a birth date, sex,
address, zip, phone, e-mail and, for some, an SSN hash. A near-duplicate is another record of an
existing person as another system would have typed it: a typo or transposition in a name, day and
month swapped or a day off in the birth date, a new address, a missing phone or e-mail.
The tables are member-shaped (as normalization leaves them) and carry `person_id`, the truth.
"""

from __future__ import annotations

import duckdb

SYLLABLES = ("an", "ber", "cal", "da", "el", "fi", "ga", "har", "is", "jo", "ka", "li", "mar", "ni", "ol",
             "pe", "qui", "ro", "sa", "ta", "ul", "vi", "wen", "xa", "yo", "za", "bri", "chen", "dor", "lu",
             "mo", "ne", "rin", "sol", "tho", "ve")
SURNAME_ENDINGS = ("son", "er", "ez", "ski", "ton", "berg", "ford", "well", "man", "ley", "ova", "ini", "")
STREET_KINDS = ("st", "ave", "rd", "ln", "dr", "ct", "way", "blvd")


def _list(values) -> str:
    return "[" + ", ".join(f"'{v}'" for v in values) + "]"


def _pick(values, h: str, skew: float = 1.0) -> str:
    """One of `values`; skew > 1 makes the first ones more common (a rough Zipf)."""
    u = f"(({h}) % 1000000) / 1000000.0"
    return f"{_list(values)}[1 + floor(pow({u}, {skew}) * {len(values)})::INTEGER]"


def people_sql(first: int, count: int, seed: int) -> str:
    """`count` clean people with person_id first..first+count-1."""
    h = lambda salt: f"hash(person_id, {seed}, {salt})"  # noqa: E731
    return f"""
        SELECT person_id,
               {_pick(SYLLABLES, h(1), 1.6)} || {_pick(SYLLABLES, h(2), 1.3)} AS first_name,
               {_pick(SYLLABLES, h(3), 1.4)} || {_pick(SYLLABLES, h(4), 1.2)}
                   || {_pick(SURNAME_ENDINGS, h(5), 1.2)} AS last_name,
               DATE '1930-01-01' + ({h(6)} % 32000)::INTEGER AS birth_date,
               CASE WHEN {h(7)} % 2 = 0 THEN 'F' ELSE 'M' END AS sex,
               (1 + {h(8)} % 9999)::VARCHAR || ' ' || {_pick(SYLLABLES, h(9))} || {_pick(SYLLABLES, h(10))} || ' '
                   || {_pick(STREET_KINDS, h(11))} AS address_line1,
               lpad((10000 + {h(12)} % 1500 * 61)::VARCHAR, 5, '0') AS zip,
               (2000000000 + {h(13)} % 7999999999)::VARCHAR AS phone,
               person_id AS email_n,
               CASE WHEN {h(14)} % 10 < 4 THEN sha256('ssn' || person_id::VARCHAR || '{seed}') END AS ssn_hash
        FROM range({first}, {first + count}) t(person_id)"""


def _typo(col: str, h: str) -> str:
    """One edit of `col` chosen by h: substitute, transpose two neighbours, or delete a letter."""
    pos = f"(2 + ({h} // 7) % greatest(length({col}) - 2, 1))::INTEGER"
    letter = f"chr(97 + (({h} // 101) % 26)::INTEGER)"
    return f"""CASE ({h}) % 3
        WHEN 0 THEN left({col}, {pos} - 1) || {letter} || substr({col}, {pos} + 1)
        WHEN 1 THEN left({col}, {pos} - 1) || substr({col}, {pos} + 1, 1) || substr({col}, {pos}, 1)
                    || substr({col}, {pos} + 2)
        ELSE left({col}, {pos} - 1) || substr({col}, {pos} + 1) END"""


def near_duplicates_sql(people: str, count: int, seed: int, first_person: int, persons: int) -> str:
    """`count` near-duplicate records of people drawn from person_id first_person..+persons-1 of `people`."""
    h = lambda salt: f"hash(k, {seed}, {salt})"  # noqa: E731
    u = lambda salt: f"({h(salt)} % 100)"  # noqa: E731
    return f"""
        SELECT p.person_id,
               CASE WHEN {u(1)} < 30 THEN {_typo('p.first_name', h(2))} ELSE p.first_name END AS first_name,
               CASE WHEN {u(3)} < 20 THEN {_typo('p.last_name', h(4))} ELSE p.last_name END AS last_name,
               CASE WHEN {u(5)} < 8 AND day(p.birth_date) <= 12
                        THEN make_date(year(p.birth_date), day(p.birth_date), month(p.birth_date))
                    WHEN {u(5)} < 14 THEN p.birth_date + 1
                    ELSE p.birth_date END AS birth_date,
               p.sex,
               CASE WHEN {u(6)} < 30 THEN (1 + {h(7)} % 9999)::VARCHAR || ' moved ' || {_pick(STREET_KINDS, h(8))}
                    WHEN {u(6)} < 40 THEN {_typo('p.address_line1', h(9))}
                    ELSE p.address_line1 END AS address_line1,
               CASE WHEN {u(6)} < 30 THEN lpad((10000 + {h(10)} % 1500 * 61)::VARCHAR, 5, '0') ELSE p.zip END AS zip,
               CASE WHEN {u(11)} < 25 THEN NULL WHEN {u(11)} < 35 THEN (2000000000 + {h(12)} % 7999999999)::VARCHAR
                    ELSE p.phone END AS phone,
               CASE WHEN {u(13)} < 40 THEN NULL ELSE p.email_n END AS email_n,
               CASE WHEN {u(14)} < 20 THEN NULL ELSE p.ssn_hash END AS ssn_hash
        FROM range({count}) t(k)
        JOIN ({people}) p ON p.person_id = {first_person} + {h(0)} % {persons}"""


def members_sql(records: str, id_prefix: str, seed: int) -> str:
    """Member-shaped rows (as normalization leaves them) from person records; IDs unrelated to persons."""
    return f"""
        SELECT row_number() OVER (ORDER BY hash(person_id, first_name, birth_date, address_line1, {seed})) AS n,
               person_id, first_name, NULL AS middle_name, last_name, birth_date, sex,
               to_json([{{'address_line1': address_line1, 'address_line2': NULL, 'city': 'Springfield',
                          'state': 'MA', 'zip': zip}}])::VARCHAR AS addresses,
               CASE WHEN email_n IS NOT NULL THEN to_json([first_name || '.' || last_name || email_n::VARCHAR
                                                           || '@example.org'])::VARCHAR END AS emails,
               CASE WHEN phone IS NOT NULL THEN to_json([phone])::VARCHAR END AS phones,
               ssn_hash, NULL AS match_key
        FROM ({records})"""


def make_target_and_batch(con: duckdb.DuckDBPyConnection, target_size: int, batch_size: int, seed: int = 7,
                          target_dup_rate: float = 0.02, batch_dup_of_target: float = 0.03,
                          batch_dup_within: float = 0.01) -> None:
    """Create `synthetic_target` and `synthetic_batch` (member-shaped) in `con`.

    The target holds `target_size` members, `target_dup_rate` of them near-duplicates of other target
    members; the batch holds `batch_size` rows: new people, `batch_dup_of_target` near-duplicates of
    target people and `batch_dup_within` near-duplicates of the batch's own new people.
    """
    t_dups = int(target_size * target_dup_rate)
    t_people = target_size - t_dups
    b_target_dups = int(batch_size * batch_dup_of_target)
    b_within = int(batch_size * batch_dup_within)
    b_people = batch_size - b_target_dups - b_within
    people = people_sql(0, t_people + b_people, seed)
    con.execute(f"CREATE OR REPLACE TEMP TABLE synthetic_people AS {people}")
    target_records = (f"SELECT * FROM synthetic_people WHERE person_id < {t_people} UNION ALL "
                      + near_duplicates_sql("SELECT * FROM synthetic_people", t_dups, seed + 1, 0, t_people))
    con.execute(f"""CREATE OR REPLACE TABLE synthetic_target AS
        SELECT 'M-' || n AS member_id, * EXCLUDE (n) FROM ({members_sql(target_records, 'M', seed)})""")
    batch_records = (
        f"SELECT * FROM synthetic_people WHERE person_id >= {t_people} UNION ALL "
        + near_duplicates_sql("SELECT * FROM synthetic_people", b_target_dups, seed + 2, 0, t_people)
        + " UNION ALL "
        + near_duplicates_sql("SELECT * FROM synthetic_people", b_within, seed + 3, t_people, b_people))
    con.execute(f"""CREATE OR REPLACE TABLE synthetic_batch AS
        SELECT n - 1 AS rid, n AS row_number, 'B-' || n AS member_id, * EXCLUDE (n)
        FROM ({members_sql(batch_records, 'B', seed + 5)})""")
    con.execute("DROP TABLE synthetic_people")
