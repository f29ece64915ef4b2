"""Staging in batches on several workers: the same rows, quarantine, GX frame and GX result as one batch on one worker."""

from __future__ import annotations

import duckdb
import pytest

import orchestration.ingest.core as core
from orchestration.ingest import ingest_source
from orchestration.quality import validate_contract
from test_ingest_rules import CASES, GOOD, HEADERS

SOURCE = "channel_events"


def _land_history(land) -> None:
    """Eight files of different sizes and two schema signatures; one is rejected, one re-delivers another."""
    bad = [row for (s, _), (row, _) in CASES.items() if s == SOURCE]
    header = HEADERS[SOURCE].split(",")
    texts = {}
    for day in range(1, 6):
        rows = [GOOD[SOURCE].replace("g1,", f"d{day}r{i},") for i in range(day * 3)] + bad[: day + 1]
        texts[day] = "\n".join([HEADERS[SOURCE], *rows]) + "\n"
        land(f"{SOURCE}/dt=2024-02-0{day}/a.csv", texts[day])
    # another signature: the columns in reverse order
    rows = [",".join(GOOD[SOURCE].replace("g1,", f"rev{i},").split(",")[::-1]) for i in range(4)]
    land(f"{SOURCE}/dt=2024-02-03/b.csv", "\n".join([",".join(header[::-1]), *rows, ",".join(bad[0].split(",")[::-1])]) + "\n")
    land(f"{SOURCE}/dt=2024-02-04/broken.csv.gz", b"not gzip at all")
    land(f"{SOURCE}/dt=2024-02-05/again.csv", texts[1])  # same content as day 1: a duplicate in the same run


def _tables(con) -> dict[str, list]:
    out = {}
    for table, order, skip in (("raw.channel_events", "_file_id, _row_number", {"_loaded_at"}),
                               ("raw.quarantine", "file_id, row_number", {"quarantined_at"}),
                               ("raw.ingestion_ledger", "file_id", {"started_at", "finished_at"})):
        cols = [r[0] for r in con.execute(f"DESCRIBE {table}").fetchall() if r[0] not in skip]
        out[table] = con.execute(f"SELECT {', '.join(cols)} FROM {table} ORDER BY {order}").fetchall()
    return out


def _assert_examples_are_quarantined_rows(con, validation) -> None:
    quarantined: dict[str, set] = {}
    for fid, rn, rules in con.execute("SELECT file_id, row_number, rules FROM raw.quarantine").fetchall():
        for rule in rules.split(","):
            quarantined.setdefault(rule, set()).add((fid, rn))
    assert {r for r, n in validation.unexpected_by_rule.items() if n} == set(validation.examples_by_rule)
    for rule, n in validation.unexpected_by_rule.items():
        shown = [(e["_file_id"], e["_row_number"]) for e in validation.examples_by_rule.get(rule, [])]
        assert len(set(shown)) == len(shown) == min(n, 5) and shown == sorted(shown)
        assert set(shown) <= quarantined.get(rule, set())


@pytest.mark.parametrize("workers", [1, 3])
def test_small_batches_on_workers_equal_one_batch(settings, land, monkeypatch, workers):
    _land_history(land)
    one = duckdb.connect()
    single = ingest_source(one, SOURCE, settings, "run")
    expected, expected_frame = _tables(one), single.frame.to_pandas()
    expected_gx = validate_contract(SOURCE, single.frame)

    monkeypatch.setattr(core, "BATCH_BYTES", 1)  # every file a batch of its own
    monkeypatch.setattr(core, "ingest_workers", lambda: workers)
    many = duckdb.connect()
    report = ingest_source(many, SOURCE, settings, "run")
    assert len(report.frame._parts) >= 6  # one part per loaded file (and signature)
    assert _tables(many) == expected
    assert [(f.path, f.status, f.rows_read, f.rows_quarantined) for f in report.files] == [
        (f.path, f.status, f.rows_read, f.rows_quarantined) for f in single.files]
    assert [f.status for f in report.files].count("rejected") == 1
    assert [f.status for f in report.files].count("duplicate") == 1

    frame = report.frame.to_pandas()
    assert frame.equals(expected_frame)
    assert frame.index.tolist() == list(range(len(frame)))  # position in the run: file id, then row order
    assert frame["_file_id"].is_monotonic_increasing
    picked = report.frame.take([0, len(frame) - 1, 7], ["_file_id", "_row_number", "event_id"])
    assert picked.index.tolist() == [0, 7, len(frame) - 1]
    assert picked.equals(frame.loc[[0, 7, len(frame) - 1], ["_file_id", "_row_number", "event_id"]])

    assert report.frame.position(*frame.loc[7, ["_file_id", "_row_number"]]) == 7
    # GX over many small parts (DuckDB reads them all in one query) equals GX over one part
    gx = validate_contract(SOURCE, report.frame)
    assert gx.unexpected_by_rule == expected_gx.unexpected_by_rule == report.quarantine_by_rule
    # examples are the first rows GX finds in the parts' order, which depends on how files were batched: in
    # both layouts, as many as there are (at most five) and each one of the rule's quarantined rows
    _assert_examples_are_quarantined_rows(many, gx)
    _assert_examples_are_quarantined_rows(one, expected_gx)
    assert gx.expectation_results == expected_gx.expectation_results
    report.frame.close()
    single.frame.close()


def test_a_worker_error_stops_the_run_and_loads_nothing(con, settings, land, monkeypatch):
    _land_history(land)
    monkeypatch.setattr(core, "BATCH_BYTES", 1)
    monkeypatch.setattr(core, "ingest_workers", lambda: 2)
    real = core._judge_select
    calls = []

    def judge(c, signature, settings_, table, **kw):
        calls.append(table)
        if len(calls) == 3:
            return "SELECT no_such_column FROM " + table
        return real(c, signature, settings_, table, **kw)

    monkeypatch.setattr(core, "_judge_select", judge)
    with pytest.raises(duckdb.BinderException):
        ingest_source(con, SOURCE, settings, "run")
    assert con.execute("SELECT count(*) FROM raw.ingestion_ledger").fetchone()[0] == 0
    assert con.execute("SELECT count(*) FROM raw.channel_events").fetchone()[0] == 0


def test_validation_during_the_load_equals_validation_afterwards(settings, land, monkeypatch):
    """ingest_source(validate=...) runs the suite on the judged rows while they load: the same result as
    validating the returned frame afterwards; it really overlaps the load (the load is under way in another
    thread while it runs), and it keeps the calling thread (GX changes process-wide state, as before)."""
    import threading

    _land_history(land)
    loading = threading.Event()
    seen_during_load: list[bool] = []
    real_load = core._load_rows
    caller = threading.current_thread()

    def load(*args, **kwargs):
        assert threading.current_thread() is not caller
        loading.set()
        try:
            return real_load(*args, **kwargs)
        finally:
            loading.clear()

    def validate(frame):
        assert threading.current_thread() is caller
        started_in_load = loading.wait(timeout=30)
        seen_during_load.append(started_in_load)
        return validate_contract(SOURCE, frame)

    monkeypatch.setattr(core, "_load_rows", load)
    con = duckdb.connect()
    report = ingest_source(con, SOURCE, settings, "run", validate=validate)
    threaded = report.validation.result(timeout=120)
    after = validate_contract(SOURCE, report.frame)
    assert seen_during_load == [True]
    assert threaded.unexpected_by_rule == after.unexpected_by_rule == report.quarantine_by_rule
    assert threaded.examples_by_rule == after.examples_by_rule
    assert threaded.expectation_results == after.expectation_results
    report.frame.close()


def test_a_validation_error_surfaces_from_the_future_after_the_rows_loaded(con, settings, land):
    _land_history(land)

    def validate(frame):
        raise RuntimeError("suite exploded")

    report = ingest_source(con, SOURCE, settings, "run", validate=validate)
    with pytest.raises(RuntimeError, match="suite exploded"):
        report.validation.result(timeout=60)
    assert con.execute("SELECT count(*) FROM raw.channel_events").fetchone()[0] == report.rows_loaded > 0
    report.frame.close()


def test_a_failed_load_waits_for_the_validation_before_removing_the_parts(con, settings, land, monkeypatch):
    """The validation reads the parts; the load's failure (in its worker) must not delete them under it, and is
    raised once the validation is over."""
    import threading
    import time

    _land_history(land)
    release = threading.Event()
    read: list[int] = []

    def validate(frame):
        release.wait(timeout=30)
        time.sleep(0.2)  # still reading after the load has failed
        read.append(len(frame.to_pandas()))
        return "done"

    def load(*args, **kwargs):
        release.set()
        raise RuntimeError("disk full")

    monkeypatch.setattr(core, "_load_rows", load)
    with pytest.raises(RuntimeError, match="disk full"):
        ingest_source(con, SOURCE, settings, "run", validate=validate)
    assert len(read) == 1 and read[0] > 0  # the parts were all there when it read them
    assert con.execute("SELECT count(*) FROM raw.ingestion_ledger").fetchone()[0] == 0


def test_an_empty_run_is_validated_before_returning(con, settings, land):
    report = ingest_source(con, SOURCE, settings, "run", validate=lambda frame: len(frame))
    assert report.validation.done() and report.validation.result() == 0
