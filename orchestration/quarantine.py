"""`privdom quarantine`: the quarantined rows, and which of them a later delivery has since corrected.

SPEC §2: a row that breaks a rule is quarantined, and "quarantined rows can be corrected and re-delivered in a
new file". raw.quarantine keeps every quarantined row for good (only `privdom unload` takes rows out), so it
cannot say which rows are still to be corrected. A quarantined row counts as corrected when a file loaded after
its own holds a row of the same key (event_id; order_id or referral_id with the same `updated_at`, read as
ingestion reads it): the event or the order version it was meant to be. A row without a key, or a version row
whose `updated_at` does not read as a timestamp, cannot be matched and stays open until its file is unloaded.

A row delivered again unchanged (the same original row: a feed that sends the last N days again every day) is
one row, listed at its latest copy with how many times it came and where first (the windowed re-delivery review
saw one bad row listed 7 times). It is corrected once a file loaded after its first copy holds a row of its key:
a steward's correction stays one while the feed keeps sending the bad row (the diff review), and a bad version
sent beside its valid one is corrected by the valid one's next copy.

`--csv OUT` writes the rows of one source as a CSV with the contract's columns, the values as delivered, and
three columns the contract does not know (`_file`, `_row_number`, `_rules`), which ingestion ignores: correct
the values, keep the rows to deliver, and put the file into landing/<source>/ under a new name with a batch
date (every timestamp must be earlier than the batch date + 2 days).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import duckdb

from orchestration.contract import CONTRACTS

EXTRA_COLUMNS = ("_file", "_row_number", "_rules")


@dataclass
class QuarantinedRow:
    source: str
    file_path: str
    row_number: int
    rules: str
    original_row: str
    corrected_in: str | None  # the ledger path of the first later file with a row of the same key
    copies: int = 1  # how many times this original row was quarantined (in the files asked for)
    first_file: str | None = None  # the file of its first copy, when there were several

    def values(self) -> dict:
        """The row as delivered, a contract column under its own name however the file spelt it (`Order_ID `)."""
        try:
            values = json.loads(self.original_row)
        except ValueError:
            values = None
        if not isinstance(values, dict):
            return {"malformed_record": self.original_row}
        names = {n: n for n in CONTRACTS[self.source].column_names}
        out: dict = {}
        for key, value in values.items():
            name = names.get(key.strip().lower(), key)
            if name not in out:  # the first of one column's spellings, as ingestion reads it
                out[name] = value
        return out


def _delivered(column: str) -> str:
    """SQL: the quarantined row's text for a contract column, trimmed, whatever case and spaces the file's header
    gave its name (the first such key, as ingestion reads it)."""
    key = f"list_filter(json_keys(q.original_row), lambda k: lower(trim(k)) = '{column}')[1]"
    return f"nullif(trim(q.original_row ->> {key}), '')"


def _matches_sql(source: str) -> str:
    c = CONTRACTS[source]
    on = f"r.{c.key} = {_delivered(c.key)}"
    if c.version_column:
        # ingestion's reading of a timestamp text: TRY_CAST under the connection's Asia/Shanghai time zone
        on += f" AND r.{c.version_column} = TRY_CAST({_delivered(c.version_column)} AS TIMESTAMPTZ)"
    return (f"SELECT q.file_id, q.row_number, min(r._file_id) AS corrected_by FROM raw.quarantine q "
            f"JOIN raw.{source} r ON {on} AND r._file_id > q.file_id "
            f"WHERE q.source = '{source}' AND json_valid(q.original_row) GROUP BY ALL")


def quarantined_rows(con: duckdb.DuckDBPyConnection, *, source: str | None = None,
                     files: list[str] | None = None) -> list[QuarantinedRow]:
    sources = [source] if source else list(CONTRACTS)
    present = {n for (n,) in con.execute(
        "select table_name from information_schema.tables where table_schema = 'raw'").fetchall()}
    if "quarantine" not in present:
        return []
    matches = " UNION ALL ".join(_matches_sql(s) for s in sources if s in present) or \
        "SELECT NULL::BIGINT AS file_id, NULL::BIGINT AS row_number, NULL::BIGINT AS corrected_by WHERE false"
    rows = con.execute(
        f"""
        WITH m AS ({matches})
        SELECT q.source, q.file_path, q.row_number, q.rules, q.original_row, l.file_path
        FROM raw.quarantine q
        LEFT JOIN m ON m.file_id = q.file_id AND m.row_number = q.row_number
        LEFT JOIN raw.ingestion_ledger l ON l.file_id = m.corrected_by
        WHERE q.source IN (SELECT unnest(?::VARCHAR[]))
          AND (?::VARCHAR[] IS NULL OR q.file_path IN (SELECT unnest(?::VARCHAR[])))
        ORDER BY q.source, q.file_id, q.row_number
        """,
        [sources, files, files],
    ).fetchall()
    latest: dict[tuple[str, str], QuarantinedRow] = {}  # in delivery order: the last copy of each stays
    for r in rows:
        row = QuarantinedRow(*r)
        before = latest.pop((row.source, row.original_row), None)
        if before is not None:  # the first copy's state: a later copy is corrected only if the first one is
            row.copies, row.first_file = before.copies + 1, before.first_file or before.file_path
            row.corrected_in = before.corrected_in
        latest[row.source, row.original_row] = row
    return list(latest.values())  # a key moved to the end at each copy: in the order of their latest copies


def write_csv(rows: list[QuarantinedRow], path: Path) -> int:
    """The rows of one source as a CSV to correct and deliver again; returns how many were written."""
    sources = {r.source for r in rows}
    if len(sources) > 1:
        raise ValueError(f"a CSV holds one source's rows; these are of {', '.join(sorted(sources))}: add --source")
    columns = list(CONTRACTS[next(iter(sources))].column_names) if rows else []
    values = [r.values() for r in rows]
    for v in values:  # columns outside the contract that were delivered, and a malformed record's text
        columns += [k for k in v if k not in columns]
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(columns + list(EXTRA_COLUMNS))
        for r, v in zip(rows, values):
            w.writerow([("" if v.get(c) is None else v.get(c)) for c in columns] + [r.file_path, r.row_number, r.rules])
    return len(rows)
