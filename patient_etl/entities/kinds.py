"""Field kinds: how one text cell becomes a typed value, and which Great Expectations assert it.

Each kind gives a DuckDB expression that turns the trimmed text `{v}` into its candidate canonical
value, and the expectations the suite puts on the pair (raw text, candidate value). Parsing that
needs a calendar (is Feb 30 real?) happens in DuckDB; shapes, code sets and ranges are asserted by
GX. A kind never rolls a bad value over into a good one: what does not parse stays visible.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field

US_STATES = {
    "AL": "Alabama", "AK": "Alaska", "AZ": "Arizona", "AR": "Arkansas", "CA": "California",
    "CO": "Colorado", "CT": "Connecticut", "DE": "Delaware", "FL": "Florida", "GA": "Georgia",
    "HI": "Hawaii", "ID": "Idaho", "IL": "Illinois", "IN": "Indiana", "IA": "Iowa", "KS": "Kansas",
    "KY": "Kentucky", "LA": "Louisiana", "ME": "Maine", "MD": "Maryland", "MA": "Massachusetts",
    "MI": "Michigan", "MN": "Minnesota", "MS": "Mississippi", "MO": "Missouri", "MT": "Montana",
    "NE": "Nebraska", "NV": "Nevada", "NH": "New Hampshire", "NJ": "New Jersey", "NM": "New Mexico",
    "NY": "New York", "NC": "North Carolina", "ND": "North Dakota", "OH": "Ohio", "OK": "Oklahoma",
    "OR": "Oregon", "PA": "Pennsylvania", "RI": "Rhode Island", "SC": "South Carolina",
    "SD": "South Dakota", "TN": "Tennessee", "TX": "Texas", "UT": "Utah", "VT": "Vermont",
    "VA": "Virginia", "WA": "Washington", "WV": "West Virginia", "WI": "Wisconsin", "WY": "Wyoming",
    "DC": "District of Columbia", "PR": "Puerto Rico", "GU": "Guam", "VI": "U.S. Virgin Islands",
    "AS": "American Samoa", "MP": "Northern Mariana Islands",
}
STATE_ALIASES = {"virgin islands": "VI", "us virgin islands": "VI", "washington dc": "DC", "d.c.": "DC"}

EMAIL_SHAPE = (
    r"^[a-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[a-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$"
)


def sql_str(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _case_map(mapping: dict[str, str], on: str, otherwise: str) -> str:
    whens = " ".join(f"WHEN {sql_str(k)} THEN {sql_str(v)}" for k, v in mapping.items())
    return f"(CASE {on} {whens} ELSE {otherwise} END)"


@dataclass(frozen=True)
class Check:
    """One expectation on a field, with the message a failing row gets."""

    kind: str  # not_null | match_regex | not_match_regex | in_set | between
    column: str  # "raw" or "value": which of the field's two columns it reads
    message: str
    severity: str = "error"
    args: dict = field(default_factory=dict)
    only_if_present: bool = False  # row_condition: the raw cell is not empty
    # The message of a check on the same field that this one explains more precisely: when both fail
    # on a row, only this one is reported (a two-digit year is also "not a valid date").
    supersedes: str | None = None
    month_first_only: bool = False  # skipped where a mapping template reads the field's dates otherwise


@dataclass(frozen=True)
class Kind:
    name: str
    value_sql: str  # DuckDB expression over {v} (trimmed text, NULL when empty)
    sql_type: str  # DuckDB type of the normalized column
    logical_type: str  # portable type in the target: text, date, decimal(14,2) (target/schema.py)
    describe: str
    checks: Callable[[dict], list[Check]]
    normalize_sql: str = "{value}"  # from the checked value to the stored value
    number_sql: str | None = None  # a numeric view of the value, for range checks
    echo_sql: str | None = None  # how a raw cell {v} is echoed into files (None: as sent)
    hash_sql: str | None = None  # a keyed hash of the checked value, stored as `<field>_hash` for matching


def _no_checks(_: dict) -> list[Check]:
    return []


TEXT = Kind("text", "{v}", "VARCHAR", "text", "free text", _no_checks)


def code(values: dict[str, str], describe: str) -> Kind:
    """A code from a small set; `values` maps accepted spellings (lower case) to the code."""
    codes = sorted(set(values.values()))
    check = Check("in_set", "value", f"must be one of {', '.join(codes)}", args={"value_set": codes})
    return Kind("code", _case_map(values, "lower({v})", "{v}"), "VARCHAR", "text", describe, lambda _: [check])


SEX = code(
    {"m": "M", "male": "M", "f": "F", "female": "F", "o": "O", "other": "O",
     "u": "U", "unknown": "U", "unk": "U"},
    "M, F, O or U (male, female, other, unknown; any case)",
)

_state_names = {name.lower(): abbr for abbr, name in US_STATES.items()} | STATE_ALIASES
STATE = Kind(
    "state",
    _case_map(_state_names, "lower({v})", "upper({v})"),
    "VARCHAR", "text", "two-letter code or full name (50 states, DC, territories)",
    lambda _: [Check("in_set", "value", "is not a US state, DC or territory",
                     args={"value_set": sorted(US_STATES)})],
)

ZIP = Kind(
    "zip",
    "(CASE WHEN regexp_full_match({v}, '[0-9]{{3,4}}') THEN lpad({v}, 5, '0') "
    "WHEN regexp_full_match({v}, '[0-9]{{9}}') THEN left({v}, 5) || '-' || right({v}, 4) "
    "ELSE {v} END)",
    "VARCHAR", "text", "5 digits or ZIP+4; 3-4 digits are left-padded with zeros (with a warning)",
    lambda _: [
        Check("match_regex", "value", "must be 5 digits or ZIP+4", args={"regex": r"^\d{5}(?:-\d{4})?$"}),
        Check("not_match_regex", "raw", "left-padded with zeros to 5 digits", severity="warning",
              args={"regex": r"^\d{3,4}$"}),
    ],
)

PHONE = Kind(
    "phone",
    "(CASE WHEN regexp_full_match({v}, '[0-9()+. -]+') THEN "
    "regexp_replace(regexp_replace({v}, '[^0-9]', '', 'g'), '^1([0-9]{{10}})$', '\\1') ELSE {v} END)",
    "VARCHAR", "text", "10 digits (a leading US 1 and punctuation are dropped)",
    lambda _: [Check("match_regex", "value", "must have 10 digits", args={"regex": r"^\d{10}$"})],
)

EMAIL = Kind(
    "email", "lower({v})", "VARCHAR", "text", "an e-mail address (stored lower-case)",
    lambda _: [Check("match_regex", "value", "is not a valid e-mail address", args={"regex": EMAIL_SHAPE})],
)

_LAST_FOUR = "'***-**-' || right({digits}, 4)"  # the one SSN mask: stored and echoed alike
_DIGITS = "regexp_replace({v}, '[^0-9]', '', 'g')"
# Staging keeps an SSN only as its token: the mask, a space and the keyed hash (HMAC-SHA256) of its nine
# digits; a cell that is not nine digits keeps the mask alone, and fails its check. The clear value
# stays in the landed copy (archive/) and nowhere else.
SSN_TOKEN = r"\*\*\*-\*\*-[0-9]{4} [0-9a-f]{64}"
SSN_TOKEN_MACRO = "ssn_token"
# An invalid SSN is kept (and echoed in the errors file) as the mask of its digits marked invalid: it
# keeps failing its check until the partner retypes it, and never looks like a valid masked SSN.
INVALID_MARK = " (invalid: retype it)"
_TOKEN_IN_TEMPLATE = SSN_TOKEN.replace("{", "{{").replace("}", "}}")
SSN = Kind(
    "ssn",
    "{v}",
    "VARCHAR", "text", "9 digits; stored and echoed masked to the last four",
    lambda _: [Check("match_regex", "value", "must have 9 digits", args={"regex": "^" + SSN_TOKEN + "$"})],
    normalize_sql="left({value}, 11)",
    echo_sql=f"CASE WHEN regexp_full_match({{v}}, '{_TOKEN_IN_TEMPLATE}') THEN left({{v}}, 11) ELSE {{v}} END",
    hash_sql=f"CASE WHEN regexp_full_match({{value}}, '{_TOKEN_IN_TEMPLATE}') THEN right({{value}}, 64) END",
)


def hash_column(field: str) -> str:
    """The stored column holding a field's keyed hash (`member.ssn_hash`): matching compares it."""
    return f"{field}_hash"


def ssn_token_macro(key: bytes) -> str:
    """A temporary DuckDB macro `ssn_token(cell)` (a session's, never stored in the database file): the
    cell as staging keeps it. HMAC-SHA256 is composed from DuckDB's sha256 (RFC 2104)."""
    block = key if len(key) <= 64 else hashlib.sha256(key).digest()
    block = block.ljust(64, b"\0")
    inner, outer = bytes(b ^ 0x36 for b in block).hex(), bytes(b ^ 0x5C for b in block).hex()
    digits = _DIGITS.format(v="v")
    mac = f"sha256(unhex('{outer}') || unhex(sha256(unhex('{inner}') || encode({digits}))))"
    return (f"CREATE OR REPLACE TEMP MACRO {SSN_TOKEN_MACRO}(v) AS CASE "
            f"WHEN nullif(trim(v), '') IS NULL THEN v "
            # A mask as this product echoes it (errors file) is "not provided": a partner who fixes
            # other cells of a row and re-uploads never has to retype the SSN, and never erases it.
            f"WHEN regexp_full_match(trim(v), '\\*\\*\\*-\\*\\*-[0-9]{{4}}') THEN NULL "
            f"WHEN regexp_full_match(trim(v), '[0-9 -]+') AND length({digits}) = 9 "
            f"THEN {_LAST_FOUR.format(digits=digits)} || ' ' || {mac} "
            f"ELSE {_LAST_FOUR.format(digits=digits)} || '{INVALID_MARK}' END")


# Dates parse in DuckDB (it knows Feb 30 is not a day); GX sees yyyymmdd as an integer, which keeps
# its range checks vectorized (a datetime column makes them ~5x slower).
# A year is four digits (`04/03/85` is refused with its own message, never read as the year 85); a
# date-time's time must be a real time of day (`T25:00:00` is not).
_TWO_DIGIT_YEAR = r"^[0-9]{1,2}[/-][0-9]{1,2}[/-][0-9]{2}$"
# A first part that cannot be a month and a second that can: written day first (25/03/1985, 25.03.1985).
_DAY_FIRST = r"^(?:1[3-9]|2[0-9]|3[01])[/.-](?:0?[1-9]|1[0-2])[/.-][0-9]{4}$"
_INVALID_DATE = "is not a valid date (use YYYY-MM-DD or MM/DD/YYYY)"
_DATE_PARSE = (
    "coalesce(try_strptime({v}, '%Y-%m-%d'), "
    "CASE WHEN regexp_matches({v}, '^[0-9]{{1,2}}/[0-9]{{1,2}}/[0-9]{{4}}$') THEN try_strptime({v}, '%m/%d/%Y') END, "
    "CASE WHEN regexp_matches({v}, '^[0-9]{{4}}-[0-9]{{2}}-[0-9]{{2}}[T ]([01][0-9]|2[0-3]):[0-5][0-9]"
    "(:[0-5][0-9](\\.[0-9]+)?)?(Z|[+-][0-9]{{2}}:?[0-9]{{2}})?$') "
    "THEN try_strptime(left({v}, 10), '%Y-%m-%d') END)"
)


def _as_int(day: dt.date) -> int:
    return day.year * 10000 + day.month * 100 + day.day


def _date_checks(options: dict) -> list[Check]:
    checks = [Check("not_match_regex", "raw", "has a two-digit year: write the year with four digits "
                    "(MM/DD/YYYY or YYYY-MM-DD)", args={"regex": _TWO_DIGIT_YEAR}, only_if_present=True,
                    supersedes=_INVALID_DATE),
              Check("not_match_regex", "raw", "looks written day first (DD/MM/YYYY): dates are read month "
                    "first; write MM/DD/YYYY or YYYY-MM-DD, or give the column's date format in a mapping "
                    "template (date_formats)", args={"regex": _DAY_FIRST}, only_if_present=True,
                    supersedes=_INVALID_DATE, month_first_only=True),
              Check("not_null", "value", _INVALID_DATE, only_if_present=True)]
    earliest, latest = options.get("min_date"), options.get("max_date")
    if earliest is not None:
        checks.append(Check("between", "value", f"is before {earliest.isoformat()}",
                            args={"min_value": _as_int(earliest)}))
    if latest == "today":
        checks.append(Check("between", "value", "is in the future",
                            args={"max_value": _as_int(dt.date.today())}))
    return checks


DATE = Kind(
    "date",
    f"CAST(strftime({_DATE_PARSE}, '%Y%m%d') AS INTEGER)",
    "DATE", "date", "YYYY-MM-DD, MM/DD/YYYY, M/D/YYYY or an ISO date-time (date part used)",
    _date_checks,
    normalize_sql="CAST(strptime(CAST({value} AS VARCHAR), '%Y%m%d') AS DATE)",
)


def _amount_checks(options: dict) -> list[Check]:
    checks = [Check("match_regex", "value", "must be an amount with at most two decimals",
                    args={"regex": r"^-?\d+(?:\.\d{1,2})?$"})]
    if options.get("min_amount") is not None:
        checks.append(Check("between", "number", f"must be at least {options['min_amount']}",
                            args={"min_value": options["min_amount"]}))
    return checks


AMOUNT = Kind(
    "amount",
    "(CASE WHEN regexp_full_match({v}, '\\$?-?[0-9,]*\\.?[0-9]*') THEN replace(replace({v}, '$', ''), ',', '') "
    "ELSE {v} END)",
    "DECIMAL(14,2)", "decimal(14,2)", "a decimal amount with at most two decimals",
    _amount_checks,
    normalize_sql="CAST({value} AS DECIMAL(14,2))",
    number_sql="TRY_CAST({value} AS DOUBLE)",
)


# NPI check digit: Luhn over the 10 digits plus 24, the digits of the card-issuer prefix 80840 that CMS
# puts in front of every NPI. The remainder is the "number" GX asserts is 0; NULL unless 10 digits, so a
# bad shape and a bad check digit each get their own message.
_NPI_LUHN = (
    "CASE WHEN regexp_full_match({value}, '[0-9]{{10}}') THEN (24 + list_sum(list_transform("
    "string_split({value}, ''), lambda digit, i: CASE WHEN i % 2 = 1 "
    "THEN (CAST(digit AS INTEGER) * 2) // 10 + (CAST(digit AS INTEGER) * 2) % 10 "
    "ELSE CAST(digit AS INTEGER) END))) % 10 END"
)

NPI = Kind(
    "npi",
    "(CASE WHEN regexp_full_match({v}, '[0-9 -]+') THEN regexp_replace({v}, '[^0-9]', '', 'g') ELSE {v} END)",
    "VARCHAR", "text", "10 digits with a valid check digit (Luhn with the 80840 prefix); spaces and dashes dropped",
    lambda _: [
        Check("match_regex", "value", "must have 10 digits", args={"regex": r"^\d{10}$"}),
        Check("between", "number", "is not a valid NPI (check digit)", args={"min_value": 0, "max_value": 0}),
    ],
    number_sql=_NPI_LUHN,
)

TAXONOMY = Kind(
    "taxonomy", "upper({v})", "VARCHAR", "text", "a 10-character NUCC taxonomy code ending in X (207Q00000X)",
    lambda _: [Check("match_regex", "value", "must be a NUCC taxonomy code like 207Q00000X",
                     args={"regex": r"^[0-9A-Z]{9}X$"})],
)


def code_list(name: str, item: str, normalize_item: str, message: str, describe: str) -> Kind:
    """`;`-separated codes, each upper-cased and trimmed, empty items dropped, each matching `item`.

    `normalize_item` is a DuckDB expression over `item` (one code) giving its canonical spelling.
    """
    items = "list_filter(list_transform(string_split(upper({v}), ';'), lambda item: trim(item)), lambda item: item <> '')"
    value = f"array_to_string(list_transform({items}, lambda item: {normalize_item}), ';')"
    regex = rf"^{item}(?:;{item})*$"
    return Kind(name, value, "VARCHAR", "text", describe,
                lambda _: [Check("match_regex", "value", message, args={"regex": regex})])


ICD10_CODE = r"[A-Z][0-9][0-9A-Z](?:\.[0-9A-Z]{1,4})?"
ICD10_CODES = code_list(
    "icd10_codes", ICD10_CODE,
    r"regexp_replace(item, '^([A-Z][0-9][0-9A-Z])([0-9A-Z]{{1,4}})$', '\1.\2')",
    "must be ICD-10-CM codes shaped like A00, E11.9 or S72.001A, separated by ;",
    "ICD-10-CM codes separated by ; (E11.9;I10); any case; a missing dot is added (E119 -> E11.9)",
)

CPT_CODE = r"(?:[0-9]{4}[0-9A-Z]|[A-V][0-9]{4})(?:-[0-9A-Z]{2}){0,4}"
CPT_CODES = code_list(
    "cpt_codes", CPT_CODE, "item",
    "must be CPT or HCPCS codes shaped like 99213, 0001U or G0438, each with optional -XX modifiers, "
    "separated by ;",
    "CPT (99213, 3074F) or HCPCS (G0438) codes separated by ;, each with up to four modifiers (99213-25)",
)

ADJUSTMENT_CODE = r"(?:CO|PR|OA|PI|CR)-[0-9A-Z]{1,3}"
ADJUSTMENT_CODES = code_list(
    "adjustment_codes", ADJUSTMENT_CODE,
    r"regexp_replace(item, '^(CO|PR|OA|PI|CR)[ _-]*([0-9A-Z]{{1,3}})$', '\1-\2')",
    "must be group-reason adjustment codes like CO-45 or PR-1 (groups CO, PR, OA, PI, CR), separated by ;",
    "claim adjustment group and reason codes separated by ; (CO-45;PR-1); CO45 and co 45 are read as CO-45",
)
