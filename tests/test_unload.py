"""`privdom unload`: a loaded file's rows leave raw and quarantine in one transaction, its ledger row says so,
and the next build of every dbt step rebuilds from raw. (The whole pipeline after an unload:
tests/test_incremental.py::test_an_unloaded_file_leaves_the_marts_as_if_never_delivered.)"""

from __future__ import annotations

import datetime as dt

import pytest

from orchestration import dbt as dbt_runner
from orchestration.cli import main
from orchestration.ingest import ingest_source
from orchestration.settings import SettingsError
from orchestration.unload import ledger_path, unload
from orchestration.warehouse import connect

HEADER = "order_id,updated_at,created_at,status,gross_amount,openid,paid_at\n"


def _order(order_id: str, status: str = "paid", amount: str = "10.00") -> str:
    return f"{order_id},2024-01-31 10:00:00,2024-01-31 09:00:00,{status},{amount},o{order_id},2024-01-31 10:00:00\n"


@pytest.fixture
def loaded(settings, land):
    """Three order files loaded into the data directory's warehouse: a (2 rows, 1 of them quarantined), b (1
    row), and a rejected one; every dbt step's build recorded."""
    land("orders/a_20240131.csv", HEADER + _order("A1") + _order("A2", status="lost"))
    land("orders/b_20240131.csv", HEADER + _order("B1"))
    land("orders/c_20240131.xlsx", b"PK\x03\x04")
    con = connect(settings.warehouse_path)
    try:
        ingest_source(con, "orders", settings, "run1")
        for step in ("dbt_staging", "dbt_identity_inputs", "dbt_models"):
            dbt_runner.record_fingerprint(con, step, "fp")
    finally:
        con.close()
    return settings


def _q(settings, sql, params=None):
    con = connect(settings.warehouse_path, read_only=True)
    try:
        return con.execute(sql, params or []).fetchall()
    finally:
        con.close()


def _state(settings):
    return {
        "raw": _q(settings, "select order_id, _file_id from raw.orders order by 1"),
        "quarantine": _q(settings, "select file_path, row_number from raw.quarantine order by 1, 2"),
        "ledger": _q(settings, "select file_path, status, error, rows_loaded, rows_quarantined from raw.ingestion_ledger order by 1"),
        "fingerprints": _q(settings, "select step, fingerprint from raw.dbt_incremental_state order by 1"),
    }


def test_a_file_unloaded_leaves_raw_and_quarantine_and_its_ledger_row_says_so(loaded):
    before = _state(loaded)
    assert [r[0] for r in before["raw"]] == ["A1", "B1"] and before["quarantine"] == [("orders/a_20240131.csv", 2)]
    con = connect(loaded.warehouse_path)
    try:
        report = unload(con, loaded, ["orders/a_20240131.csv"], now=dt.datetime(2024, 2, 1, 8, 0, tzinfo=dt.UTC))
    finally:
        con.close()
    assert [(f.path, f.rows, f.quarantined) for f in report.files] == [("orders/a_20240131.csv", 1, 1)]
    after = _state(loaded)
    assert [r[0] for r in after["raw"]] == ["B1"]
    assert after["quarantine"] == []
    ledger = {r[0]: r[1:] for r in after["ledger"]}
    # the ledger row stays, with what was delivered and what was taken out
    assert ledger["orders/a_20240131.csv"] == (
        "unloaded", "unloaded at 2024-02-01 08:00:00 UTC by privdom unload: 1 rows taken out of raw.orders, "
        "1 of raw.quarantine", 1, 1)
    assert ledger["orders/b_20240131.csv"][:1] == ("loaded",)
    assert after["fingerprints"] == [(step, dbt_runner.UNLOADED) for step in ("dbt_identity_inputs", "dbt_models", "dbt_staging")]
    text = report.describe()
    assert "orders/a_20240131.csv (file_id 1, batch 2024-01-31): 1 rows of raw.orders, 1 of raw.quarantine" in text
    assert "next `privdom run` rebuilds" in text


def test_the_next_dbt_build_of_every_step_says_it_rebuilds_from_raw_because_of_the_unload():
    from orchestration.defs.dbt import _full_refresh_reason

    class Run:
        tags: dict = {}

    class Context:
        run = Run()

    assert _full_refresh_reason(Context(), dbt_runner.UNLOADED, "fp") == "files were taken out of raw (privdom unload) since the last build"
    assert _full_refresh_reason(Context(), "fp", "fp") is None


def test_a_dry_run_changes_nothing(loaded):
    before = _state(loaded)
    con = connect(loaded.warehouse_path, read_only=True)
    try:
        report = unload(con, loaded, ["orders/a_20240131.csv"], dry_run=True)
    finally:
        con.close()
    assert [(f.rows, f.quarantined) for f in report.files] == [(1, 1)]
    assert "would take out 1 loaded file(s)" in report.describe() and "nothing was changed" in report.describe()
    assert _state(loaded) == before


@pytest.mark.parametrize("given, words", [
    ("orders/a_20240131.cvs", "no loaded file orders/a_20240131.cvs in raw.ingestion_ledger; loaded files with a like name: orders/a_20240131.csv"),
    ("a_20240131.csv", "beginning with its source: channel_events, orders, referrals"),
    ("orders/c_20240131.xlsx", "orders/c_20240131.xlsx is not loaded (its ledger row says rejected)"),
])
def test_a_file_that_is_not_loaded_is_refused_and_nothing_changes(loaded, given, words):
    before = _state(loaded)
    con = connect(loaded.warehouse_path)
    try:
        with pytest.raises(SettingsError) as caught:
            unload(con, loaded, ["orders/b_20240131.csv", given])
    finally:
        con.close()
    assert words in str(caught.value) and str(caught.value).endswith("Nothing was unloaded")
    assert _state(loaded) == before


def test_a_file_is_named_as_the_ledger_prints_it_or_by_a_path_to_it(settings, monkeypatch):
    landing = settings.landing_dir
    assert ledger_path(settings, "orders/a.csv") == "orders/a.csv"
    assert ledger_path(settings, "./orders/a.csv") == "orders/a.csv"
    assert ledger_path(settings, str(landing / "orders" / "a.csv")) == "orders/a.csv"  # need not exist any more
    monkeypatch.chdir(settings.data_dir.parent)
    assert ledger_path(settings, f"{settings.data_dir.name}/landing/orders/a.csv") == "orders/a.csv"
    assert ledger_path(settings, '"orders/a.csv "') == "orders/a.csv "  # as the summary quotes an odd name


def test_an_unloaded_file_left_in_landing_is_not_read_again_and_its_content_loads_under_another_name(loaded, land):
    con = connect(loaded.warehouse_path)
    try:
        unload(con, loaded, ["orders/b_20240131.csv"])
        report = ingest_source(con, "orders", loaded, "run2")
        assert report.files == [] and report.files_skipped == 3
        land("orders/b_again_20240131.csv", HEADER + _order("B1"))
        report = ingest_source(con, "orders", loaded, "run3")
        assert [(f.path, f.status) for f in report.files] == [("orders/b_again_20240131.csv", "loaded")]
    finally:
        con.close()


def test_the_command_unloads_and_refuses_in_one_line(loaded, capsys):
    data_dir = str(loaded.data_dir)
    assert main(["--data-dir", data_dir, "unload", "--dry-run", "orders/b_20240131.csv"]) == 0
    assert "would take out 1 loaded file(s)" in capsys.readouterr().out
    assert main(["--data-dir", data_dir, "unload", "orders/nothing.csv"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("privdom: no loaded file orders/nothing.csv") and err.count("\n") == 1
    assert main(["unload", "--data-dir", data_dir, str(loaded.landing_dir / "orders" / "b_20240131.csv")]) == 0
    assert "took out 1 loaded file(s)" in capsys.readouterr().out
    assert _q(loaded, "select status from raw.ingestion_ledger where file_path = 'orders/b_20240131.csv'") == [("unloaded",)]
    # again: it is no longer loaded
    assert main(["--data-dir", data_dir, "unload", "orders/b_20240131.csv"]) == 2
    assert "is not loaded (its ledger row says unloaded)" in capsys.readouterr().err


def test_the_run_summary_counts_unloaded_files_apart(settings):
    from orchestration.runner import PipelineResult

    ledger = [("orders", 4, 2, 1, 0, 30, 2)]  # one of the 4 files unloaded
    text = PipelineResult(settings, "0123456789abcdef", True, 1.0, ledger=ledger).describe()
    assert "1 file(s) unloaded (`privdom unload`)" in text
    assert "unloaded" not in PipelineResult(settings, "0123456789abcdef", True, 1.0,
                                            ledger=[("orders", 3, 2, 1, 0, 30, 2)]).describe()


def test_a_later_step_built_before_staging_was_rebuilt_records_no_fingerprint(loaded):
    """After an unload, a run of only the later steps (intermediate and marts picked in the UI, or a run that was
    going on when `privdom unload` ran: it holds no run lock) rebuilt dbt_models from staging that still held the
    file's rows and recorded its fingerprint: the next plain run kept them for good (int_channel_events__customers
    is delete+insert by event_id). A step may record only once every step before it has been rebuilt."""
    fp = "fp"
    con = connect(loaded.warehouse_path)
    try:
        unload(con, loaded, ["orders/a_20240131.csv"])
        assert dbt_runner.stale_upstream(con, "dbt_staging", fp) is None
        assert dbt_runner.stale_upstream(con, "dbt_models", fp) == ("dbt_staging", dbt_runner.UNLOADED)
        dbt_runner.record_fingerprint(con, "dbt_staging", fp)
        assert dbt_runner.stale_upstream(con, "dbt_models", fp) == ("dbt_identity_inputs", dbt_runner.UNLOADED)
        dbt_runner.record_fingerprint(con, "dbt_identity_inputs", fp)
        assert dbt_runner.stale_upstream(con, "dbt_models", fp) is None
        assert dbt_runner.stale_upstream(con, "dbt_models", "another fingerprint") == ("dbt_staging", fp)
    finally:
        con.close()


def test_the_steps_in_order_are_the_dbt_steps_of_the_definitions():
    from orchestration.defs.dbt import DBT_SELECTIONS

    assert dbt_runner.STEP_ORDER == tuple(DBT_SELECTIONS)


def test_a_folder_or_a_path_from_elsewhere_is_named_clearly(loaded, monkeypatch, tmp_path):
    con = connect(loaded.warehouse_path)
    try:
        with pytest.raises(SettingsError) as caught:
            unload(con, loaded, ["orders/"])
        assert str(caught.value).startswith("orders is a folder: name its files (2 loaded under it, e.g. "
                                            "orders/a_20240131.csv, orders/b_20240131.csv)")
        assert "beginning with its source" not in str(caught.value)
    finally:
        con.close()
    monkeypatch.chdir(tmp_path)  # not the data directory's parent: `landing/…` is not a path to the file here
    assert ledger_path(loaded, "landing/orders/a_20240131.csv") == "orders/a_20240131.csv"
    assert ledger_path(loaded, "some/where/landing/orders/a_20240131.csv") == "orders/a_20240131.csv"
    assert ledger_path(loaded, "orders/../orders/a_20240131.csv") == "orders/a_20240131.csv"
    assert ledger_path(loaded, "landing/notasource/a.csv") == "landing/notasource/a.csv"


def test_a_copy_recorded_as_a_duplicate_is_named(loaded, land):
    land("orders/b_again_20240131.csv", HEADER + _order("B1"))  # the content of b, under another name
    con = connect(loaded.warehouse_path)
    try:
        assert [f.status for f in ingest_source(con, "orders", loaded, "run2").files] == ["duplicate"]
        report = unload(con, loaded, ["orders/b_20240131.csv"], dry_run=True)
    finally:
        con.close()
    assert report.files[0].copies == ("orders/b_again_20240131.csv",)
    assert ("the same content was delivered as orders/b_again_20240131.csv, recorded as a duplicate: it is not "
            "read again either") in report.describe()


def test_a_dry_run_does_not_wait_for_a_run(loaded, capsys, monkeypatch):
    """A dry run reads only: it takes the warehouse's lock (as `privdom segments` does), not the run lock, which a
    `privdom run` holds from start to end."""
    from orchestration import locking

    taken = []
    real = locking.warehouse_lock

    def recording(data_dir, *, name=locking.LOCK_FILE_NAME, **kwargs):
        taken.append(name)
        return real(data_dir, name=name, **kwargs)

    monkeypatch.setattr(locking, "warehouse_lock", recording)
    assert main(["--data-dir", str(loaded.data_dir), "unload", "--dry-run", "orders/a_20240131.csv"]) == 0
    assert "would take out 1 loaded file(s)" in capsys.readouterr().out
    assert taken == [locking.LOCK_FILE_NAME]
    taken.clear()
    assert main(["--data-dir", str(loaded.data_dir), "unload", "orders/a_20240131.csv"]) == 0
    assert taken == [locking.RUN_LOCK_FILE_NAME, locking.LOCK_FILE_NAME]


def test_the_next_identity_graph_build_after_an_unload_is_a_full_one(loaded):
    """The graph's checksum reads staging's first-delivery lineage: an identical re-delivery of a tied version
    taken out of raw changes none of it, yet re-ranks the tie (docs/DECISIONS.md, "Version ties"). unload says
    so in the graph's state, whatever the files held
    (tests/test_identity_incremental.py::test_unloading_the_redelivery_that_reranked_a_tie_is_taken_in)."""
    from orchestration.identity import graph as G

    con = connect(loaded.warehouse_path)
    try:
        G._create_state_tables(con)
        con.execute(f"insert into {G.STATE_TABLE} values ('orders', 1, 1, 1, ?, 20)", [G.GRAPH_VERSION])
        unload(con, loaded, ["orders/b_20240131.csv"])
        assert G._why_full(con, 20)[0] == "files were taken out of raw (privdom unload) since the last build"
    finally:
        con.close()
