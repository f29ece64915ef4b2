"""Row counts and masked previews of warehouse tables, for materialization metadata (the Dagster UI).

A preview never shows a clear phone: a column named like a phone (other than ``phone_masked``) is masked as
138****8000, any text value holding a mainland mobile number anywhere (ASCII or full-width digits, spaces, dots
or dashes between them) is masked the same way, and a SHA-256 value (``phone_sha256``, a contact handle that is
one) is hidden, since beside the masked phone it is the phone (``contract.mask_text``). Staging's clear phones
stay in the warehouse.
"""

from __future__ import annotations

import re

import duckdb

from orchestration.contract import mask_phone, mask_text

_SAFE_PHONE_COLUMNS = ("phone_sha256", "phone_masked")
# columns of files' content hashes (raw.ingestion_ledger, raw.landing_hash_cache): shown, operators trace files by them
FILE_HASH_COLUMNS = ("content_sha256",)
MAX_CELL = 40


def _is_phone_column(name: str) -> bool:
    lowered = name.lower()
    return "phone" in lowered and not lowered.endswith(_SAFE_PHONE_COLUMNS)


# What a Markdown table cell must not carry from data delivered from outside (a campaign from a share link, a
# landing file's name): a line break (CR as well as LF: CommonMark ends a line at either) ends the table row and
# `|` the cell, and a link, an image, an autolink, raw HTML or a code span would show it as something else (a
# campaign `[Verify your account](https:evil.io)` became a link in the Dagster UI, with text of its choosing).
# Each of these characters is escaped with a backslash, which CommonMark reads as the character itself.
_LINE_BREAK = re.compile(r"\r\n?|\n")
_MARKDOWN_SPECIAL = re.compile(r"([\\`|<>\[\]])")


def markdown_cell(value: object, limit: int | None = None) -> str:
    """`value` as the text of one Markdown table cell that reads as it is: on one line, `limit` characters at
    most (cut with "…"), with the characters that would end the cell or make a link, HTML or code escaped."""
    text = "" if value is None else str(value)
    text = _LINE_BREAK.sub(" ", text)
    if limit is not None and len(text) > limit:
        text = text[: limit - 1] + "…"
    return _MARKDOWN_SPECIAL.sub(r"\\\1", text)


def _cell(value: object) -> str:
    return markdown_cell(value, MAX_CELL)


def _is_table(con: duckdb.DuckDBPyConnection, schema: str, table: str) -> bool:
    """A base table of this database: not missing, and not a view (reading a view computes it)."""
    kind = con.execute(
        "select table_type from information_schema.tables "
        "where table_catalog = current_database() and table_schema = ? and table_name = ?",
        [schema, table],
    ).fetchone()
    return kind is not None and kind[0] == "BASE TABLE"


def row_count(con: duckdb.DuckDBPyConnection, schema: str, table: str) -> int | None:
    """Rows of a table; None when there is no such table, or it is a view (counting would compute it)."""
    if not _is_table(con, schema, table):
        return None
    return con.execute(f'select count(*) from "{schema}"."{table}"').fetchone()[0]


def preview_markdown(con: duckdb.DuckDBPyConnection, schema: str, table: str, limit: int = 5) -> str | None:
    """`limit` rows of the table as a Markdown table, phones masked (None for a view, see row_count)."""
    if not _is_table(con, schema, table):
        return None
    cur = con.execute(f'select * from "{schema}"."{table}" limit {int(limit)}')
    columns = [d[0] for d in cur.description]
    rows = cur.fetchall()
    lines = ["| " + " | ".join(map(markdown_cell, columns)) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = []
        for name, value in zip(columns, row):
            if _is_phone_column(name) and value is not None:
                value = mask_phone(value)
            else:
                value = mask_text(value, hashes=name.lower() not in FILE_HASH_COLUMNS)
            cells.append(_cell(value))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
