"""Writes the bad-file corpus and its manifest `expected.csv` (run it to regenerate; the files are committed).

Cases are our own red-team files plus files shaped after public corpora: the csv-spectrum cases
(github.com/max-mapper/csv-spectrum) and the Big List of Naughty Strings (github.com/minimaxir/
big-list-of-naughty-strings), rewritten here as small rosters. Nothing is downloaded.

Manifest columns: file, exit (0 finished / 2 failed at file level), status, created, errored, message (a
substring of the failure reason or of some row's messages), settings (PatientEtl overrides, `k=v;k=v`).
"""

from __future__ import annotations

import csv
import gzip
import io
import struct
import zipfile
from pathlib import Path

HERE = Path(__file__).parent
H = "id,First Name,Last Name,dob,Sex"
rows: list[dict] = []
serial = iter(range(1, 10_000))


def uid() -> str:
    return f"BAD{next(serial):04d}"


def good(n: int = 1, sep: str = ",", first: str = "Ann") -> list[str]:
    return [sep.join([uid(), first, "Lee", "1980-01-0" + str(k % 9 + 1), "F"]) for k in range(n)]


def add(name: str, data: bytes | str, exit: int, message: str = "", status: str = "", created: int = 0,
        errored: int = 0, settings: str = "") -> None:
    path = HERE / name
    path.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    status = status or {2: "Failed", 0: "Finished with Errors" if errored else "Finished"}[exit]
    rows.append({"file": name, "exit": exit, "status": status, "created": created, "errored": errored,
                 "message": message, "settings": settings})


def text(*lines: str, nl: str = "\n") -> str:
    return nl.join(lines) + nl


def zip_of(members: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", method) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def patch_local(data: bytes, offset_in_header: int, fmt: str, value: int) -> bytes:
    """Change a field of the first local file header and the central directory entry alike."""
    out = bytearray(data)
    struct.pack_into(fmt, out, offset_in_header, value)
    central = out.find(b"PK\x01\x02")
    struct.pack_into(fmt, out, central + offset_in_header + 2, value)  # central headers carry 2 more bytes first
    return bytes(out)


def main() -> None:
    for old in HERE.iterdir():
        if old.name not in ("make_corpus.py", "__init__.py"):
            old.unlink()
    ok = text(H, *good(2)).encode()

    # --- not a roster at all
    add("roster_empty.csv", b"", 2, "is empty")
    add("roster_header_only.csv", text(H), 2, "has a header but no data rows")
    add("roster_blank_lines_only.csv", text(H, "", "", ""), 2, "has a header but no data rows")
    add("roster_whitespace_header.csv", text("   ", *good(1)), 2, "has no header line")
    add("error_page.html", text("<!DOCTYPE html>", "<html><body><h1>502 Bad Gateway</h1></body></html>"), 2,
        "matches no entity")
    add("export.json", text('[{"first": "Ann", "last": "Lee"}]'), 2, "matches no entity")
    add("export.xml", text('<?xml version="1.0"?>', "<patients><p>Ann</p></patients>"), 2, "matches no entity")
    add("other_columns.csv", text("alpha,beta,gamma", "1,2,3"), 2, "matches no entity")
    add("only_delimiters.csv", text(",,,,", "1,2,3,4,5"), 2, "matches no entity")
    add("roster_plain_text.txt", text("hello, this is not a file of patients"), 2, "matches no entity")
    add("roster_missing_required.csv", text("id,First Name,Last Name", "1,A,B"), 2,
        "required columns missing: birth_date, sex")
    add("roster_duplicate_field.csv", text(H + ",DOB", *[r + ",1980-01-01" for r in good(1)]), 2,
        "both map to birth_date")
    add("roster_ambiguous_delimiter.csv", text("dob,Sex;First Name", "1980-01-01,F;Ann"), 2,
        "cannot tell which delimiter")
    # --- encodings and binary content
    add("roster_latin1.csv", text(H, "1,Zoë,Lee,1980-01-01,F").encode("latin-1"), 2, "is not UTF-8")
    add("roster_utf16le.csv", text(H, *good(1)).encode("utf-16"), 2, "is UTF-16")
    add("roster_utf16be.csv", b"\xfe\xff" + text(H, *good(1)).encode("utf-16-be"), 2, "is UTF-16")
    add("roster_cp1252_quotes.csv", text(H, "1,\u201cAnn\u201d,Lee,1980-01-01,F").encode("cp1252"), 2,
        "is not UTF-8")
    add("roster_truncated_utf8.csv", text(H, *good(1)).encode() + "é".encode()[:1], 2, "ends mid-character")
    add("roster_binary.csv", b"id,name\x00\x01\x02\n\x00\x00\x00", 2, "binary data")
    add("roster_pdf.csv", b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n", 2, "a PDF document")
    add("roster_old_excel.csv", b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 64, 2, "an old Excel")
    add("roster_gzip_named_csv.csv", gzip.compress(ok), 2, "a gzip file")
    add("roster_zip_named_csv.csv", zip_of({"roster.csv": ok}), 2, "a zip or Excel workbook")
    # --- CSV flaws
    add("roster_unterminated_quote.csv", text(H, *good(1), f'{uid()},"Ann,Lee,1980-01-01,F', *good(2)), 2,
        "starts on line 3 is never closed")
    add("roster_text_after_quote.csv", text(H, *good(1), f'{uid()},"Ann"x,Lee,1980-01-01,F', *good(1)), 0,
        "text after a closing quote on line 3", created=2, errored=1)
    add("roster_mixed_line_endings.csv", (H + "\r\n" + good(1)[0] + "\n" + good(1)[0] + "\r\n" + good(1)[0]
                                          + "\n").encode(), 0, created=3)
    add("roster_cr_only.csv", text(H, *good(2), nl="\r"), 0, created=2)
    add("roster_short_row_after_blank.csv", text(H, *good(1), "", "X1,Ann,Lee", *good(1)), 0,
        "row has 3 values but the header has 5", created=2, errored=1)
    add("roster_long_row_keeps_id.csv", text(H, *good(1), "KEEP7,Ann,Lee,1980-01-01,F,extra"), 0,
        "more values than the header", created=1, errored=1)
    add("roster_stray_quote_mid_field.csv", text(H, f'{uid()},An"n,Lee,1980-01-01,F'), 0, created=1)
    # --- limits (small files, low limits)
    add("roster_line_limit.csv", text(H, *good(1), f'{uid()},{"A" * 600},Lee,1980-01-01,F'), 2,
        "line 3 is longer than 500 bytes", settings="max_line_bytes=500")
    add("roster_header_limit.csv", text(H + "," + ",".join(f"note {k}" for k in range(100)), *[
        r + "," * 100 for r in good(1)]), 2, "line 1 (the header) is longer than 500 bytes",
        settings="max_line_bytes=500")
    add("roster_too_many_columns.csv", text(H + "," + ",".join(f"x{k}" for k in range(60)),
                                            *[r + "," * 60 for r in good(1)]), 2,
        "has 65 columns; the limit is 50", settings="max_columns=50")
    add("roster_over_size.csv", ok, 2, "the limit is 50", settings="max_file_bytes=50")
    # --- zips
    add("batch_not_a_zip.zip", b"PK\x03\x04 this is not really a zip", 2, "is not a readable zip file")
    add("batch_no_csv.zip", zip_of({"readme.md": b"hello"}), 2, "holds no CSV file")
    add("batch_empty.zip", zip_of({}), 2, "holds no CSV file")
    stored = zip_of({"roster.csv": ok}, zipfile.ZIP_STORED)
    bad_crc = bytearray(stored)
    at = bad_crc.find(b"Ann")
    bad_crc[at] = ord("B")
    add("batch_bad_crc.zip", bytes(bad_crc), 2, "is damaged")
    add("batch_lying_size.zip", patch_local(stored, 22, "<I", 10), 2, "is damaged")
    add("batch_encrypted_flag.zip", patch_local(stored, 6, "<H", 1), 2, "is password-protected")
    add("batch_unknown_method.zip", patch_local(stored, 8, "<H", 99), 2, "compression method we cannot read")
    add("batch_many_members.zip", zip_of({f"roster_{k}.csv": ok for k in range(5)}), 2,
        "holds 5 files; the limit is 3", settings="max_zip_members=3")
    add("batch_bomb.zip", zip_of({"roster.csv": (H + "\n").encode() + b"," * (4 << 20)}), 2,
        "times its compressed size")
    add("batch_unpacks_too_large.zip", zip_of({"roster.csv": ok}), 2, "unpacks to more than 50 bytes",
        settings="max_uncompressed_bytes=50")
    add("batch_traversal.zip", zip_of({"../../etc/roster.csv": text(H, *good(1)).encode()}), 0, created=1)
    add("batch_tsv_and_pipe.zip", zip_of({"roster_a.tsv": text(H.replace(",", "\t"), *good(1, "\t")).encode(),
                                          "roster_b.txt": text(H.replace(",", "|"), *good(1, "|")).encode()}),
        0, created=2)
    # --- gzip
    add("roster_good.csv.gz", gzip.compress(text(H, *good(2)).encode()), 0, created=2)
    add("roster_truncated.csv.gz", gzip.compress(ok)[:-12], 2, "not a readable gzip file")
    add("roster_not_gzip.csv.gz", b"id,First Name\n", 2, "not a readable gzip file")
    add("roster_bomb.csv.gz", gzip.compress((H + "\n").encode() + b"," * (4 << 20)), 2,
        "times its compressed size")
    # --- workbooks
    add("roster_damaged.xlsx", zip_of({"xl/workbook.xml": b"<nope"}), 2, "not a readable Excel workbook")
    add("roster_good.xlsx", workbook(), 0, created=2)
    # --- other delimiters
    add("roster_tab.tsv", text(H.replace(",", "\t"), *good(2, "\t")), 0, created=2)
    add("roster_pipe.psv", text(H.replace(",", "|"), *good(2, "|")), 0, created=2)
    add("roster_pipe.txt", text(H.replace(",", "|"), *good(1, "|")), 0, created=1)
    add("roster_semicolon.csv", text(H.replace(",", ";") + ";Notes", *[r + ";a,b,c,d,e" for r in good(1, ";")]),
        0, created=1)
    # --- control characters: a row error per cell, never stored
    add("roster_nul_in_name.csv", text(H, *good(1), f"{uid()},An\x00n,Lee,1980-01-01,F"), 0,
        "First Name: contains a control character", created=1, errored=1)
    add("roster_control_in_unknown.csv", text(H + ",Notes", *[r + ",ok" for r in good(1)],
                                              f"{uid()},Ann,Lee,1980-01-01,F,bell\x07here"), 0,
        "Notes: contains a control character", created=1, errored=1)
    add("roster_del_char.csv", text(H, f"{uid()},Ann\x7f,Lee,1980-01-01,F"), 0, "contains a control character",
        errored=1)
    add("roster_escape_seq.csv", text(H, f"{uid()},Ann\x1b[31m,Lee,1980-01-01,F"), 0,
        "contains a control character", errored=1)
    # --- dates
    add("roster_two_digit_year.csv", text(H, f"{uid()},Ann,Lee,04/03/85,F"), 0, "write the year with four digits",
        errored=1)
    add("roster_hour_25.csv", text(H, f"{uid()},Ann,Lee,2000-01-01T25:00:00,F"), 0, "is not a valid date",
        errored=1)
    add("roster_datetime_ok.csv", text(H, f"{uid()},Ann,Lee,2000-01-01T23:59:59Z,F"), 0, created=1)
    # --- csv-spectrum, as rosters
    add("roster_spectrum_comma_in_quotes.csv", text(H + ",Notes", *[r + ',"a, b, c"' for r in good(1)]), 0,
        created=1)
    add("roster_spectrum_escaped_quotes.csv", text(H + ",Notes", *[r + ',"say ""hi"""' for r in good(1)]), 0,
        created=1)
    add("roster_spectrum_json.csv", text(H + ",Notes", *[r + ',"{""a"": [1, 2]}"' for r in good(1)]), 0,
        created=1)
    add("roster_spectrum_newlines.csv", text(H + ",Notes", *[r + ',"line 1\nline 2"' for r in good(2)]), 0,
        created=2)
    add("roster_spectrum_quotes_and_newlines.csv", text(H + ",Notes", *[r + ',"a ""b""\nc"' for r in good(1)]),
        0, created=1)
    add("roster_spectrum_crlf.csv", text(H, *good(2), nl="\r\n"), 0, created=2)
    add("roster_spectrum_empty_fields.csv", text(H + ",Notes,More", *[r + ",," for r in good(1)]), 0, created=1)
    add("roster_spectrum_utf8_bom.csv", "\ufeff" + text(H, *good(1, first="Zoë")), 0, created=1)
    # --- naughty strings, as first names
    naughty = []
    for value in [
        "Robert'); DROP TABLE member;--", "=cmd|' /C calc'!A0", "<script>alert(1)</script>", "👩🏽‍⚕️ Ann",
        "\u202eAnn", "An\u200bn", "Z̤͔ͧ̑̓ä͖̭̈̇lͮ̒ͫǫ̯̒", "NULL", "undefined", "\\\\Ann\\\\", "${jndi:ldap://x}",
        "田中", "Ａｎｎ", "O'Brien-Smith", "Ann" * 300,
    ]:
        quoted = '"' + value.replace('"', '""') + '"'
        naughty.append(f"{uid()},{quoted},Lee,1980-01-01,F")
    add("roster_naughty_strings.csv", text(H, *naughty), 0, created=len(naughty))
    add("roster_day_first_date.csv", text(H, f"{uid()},Ann,Lee,25/03/1985,F"), 0, "looks written day first",
        errored=1)
    with (HERE / "expected.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, ["file", "exit", "status", "created", "errored", "message", "settings"],
                                lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def workbook() -> bytes:
    import datetime as dt

    import openpyxl

    book = openpyxl.Workbook()
    sheet = book.active
    sheet.append(["id", "First Name", "Last Name", "dob", "Sex"])
    for k in range(2):  # a numeric ID shown with leading zeros, a date cell shown as MM/DD/YYYY
        sheet.append([900001 + k, "Ann", "Lee", dt.datetime(1980, 1, k + 1), "F"])
        sheet.cell(row=k + 2, column=1).number_format = "0000000"
        sheet.cell(row=k + 2, column=4).number_format = "mm/dd/yyyy"
    buffer = io.BytesIO()
    book.save(buffer)
    return buffer.getvalue()


if __name__ == "__main__":
    main()
