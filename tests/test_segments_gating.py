"""Gating in Dagster: exports and syncs do not run when a blocking check upstream failed, and say why."""

from __future__ import annotations

import dagster as dg
import pytest

from orchestration.defs.exports import build_export_asset, build_sync_asset
from orchestration.defs.resources import PrivdomResource
from orchestration.defs.segments import build_membership_asset
from orchestration.segments import ExportOptions, parse_definitions, parse_destinations
from orchestration.segments import membership as membership_lib
from tests.segments_helpers import ScriptedServer, customer, write_dim_customers

DEFS = parse_definitions([("defaults", {}), ("privdom.toml", {
    "buyers": {"version": 1, "purpose": "anyone who paid", "rule": [{"column": "paid_orders", "op": "gte", "value": 1}]},
})])
OPTIONS = ExportOptions(formats=("csv", "parquet"))


def _upstream(quarantine_ok: bool, crash: bool = False):
    """Stand-ins for raw/orders (with an ERROR quarantine check) and marts/dim_customers below it; with `crash`,
    raw/orders fails before it evaluates its check."""

    @dg.asset(key=["raw", "orders"], check_specs=[dg.AssetCheckSpec("quarantine_share", asset=["raw", "orders"])])
    def raw_orders():
        if crash:
            raise RuntimeError("the warehouse is in use")
        yield dg.MaterializeResult()
        yield dg.AssetCheckResult(
            check_name="quarantine_share",
            passed=quarantine_ok,
            severity=dg.AssetCheckSeverity.ERROR,
            description=None if quarantine_ok else "7.50% of this run's new rows were quarantined, above the 5.00% limit",
        )

    @dg.asset(key=["marts", "dim_customers"], deps=[raw_orders])
    def dim_customers():
        return dg.MaterializeResult()

    return [raw_orders, dim_customers]


@pytest.fixture
def data_dir(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    write_dim_customers(data / "warehouse.duckdb", [
        customer("C1", paid_orders=1), customer("C2", paid_orders=2), customer("C3", paid_orders=1, opted_out=True, is_reachable=False),
    ])
    return data


def _run(data_dir, instance, assets, selection=None):
    return dg.materialize(
        assets,
        instance=instance,
        resources={"privdom": PrivdomResource(data_dir=str(data_dir))},
        raise_on_error=False,
        selection=selection,
    )


def _checks(result):
    return {f"{e.asset_key.to_user_string()}:{e.check_name}": e for e in result.get_asset_check_evaluations()}


def _step_events(result, kind):
    return {e.step_key: e for e in result.all_events if e.event_type_value == kind}


def _assert_held_back(instance, result):
    """Exports and syncs never started, and the run's log says why (shown on the steps in the UI)."""
    started = set(_step_events(result, "STEP_START"))
    assert "segment_membership" in started and "segment_exports" not in started and "syncs__crm" not in started
    messages = [e.user_message for e in instance.all_logs(result.run_id)]
    for step in ("segment_exports", "syncs__crm"):
        assert any(f"Dependencies for step {step}" in m and "Not executing" in m for m in messages), step
    failure = _step_events(result, "STEP_FAILURE")["segment_membership"]
    assert "blocking asset check failed" in failure.event_specific_data.error.message


def _segment_assets(server_url=None):
    destinations = []
    if server_url:
        destinations = parse_destinations({"crm": {
            "type": "webhook", "url": server_url, "secret_env": "TEST_GATE_SECRET", "segments": ["buyers"], "backoff_seconds": 0.01,
        }}, ["buyers"])
    assets = [build_membership_asset(DEFS, OPTIONS, destinations), build_export_asset(DEFS, OPTIONS)]
    return assets + [build_sync_asset(d, DEFS) for d in destinations]


def test_a_failed_quarantine_check_holds_back_exports_and_syncs_and_says_why(data_dir, monkeypatch):
    monkeypatch.setenv("TEST_GATE_SECRET", "gate")
    with dg.DagsterInstance.ephemeral() as instance, ScriptedServer([], "gate") as server:
        result = _run(data_dir, instance, _upstream(quarantine_ok=False) + _segment_assets(server.url + "/hook"))
        assert not result.success
        gate = _checks(result)["segments/segment_members:upstream_checks_passed"]
        assert not gate.passed and "raw/orders:quarantine_share" in gate.description and "above the 5.00% limit" in gate.description
        failed = _step_events(result, "STEP_FAILURE")
        assert "segment_membership" in failed  # the blocking check fails the step in the UI
        _assert_held_back(instance, result)
        assert not (data_dir / "exports").exists() or not any((data_dir / "exports").rglob("*.csv"))
        assert server.requests == []

        # Materialized on its own (from the UI, say), the export looks up the latest evaluations and refuses.
        alone = _run(data_dir, instance, _upstream(True) + _segment_assets(), selection=[dg.AssetKey(["exports", "buyers"])])
        assert not alone.success
        (failure,) = _step_events(alone, "STEP_FAILURE").values()
        message = failure.event_specific_data.error.message + str(failure.event_specific_data.user_failure_data)
        assert "exports withheld" in message and "upstream_checks_passed" in message
        assert not any((data_dir / "exports").rglob("*.csv")) if (data_dir / "exports").exists() else True

        # Once the next ingest's check passes, everything flows.
        ok = _run(data_dir, instance, _upstream(quarantine_ok=True) + _segment_assets(server.url + "/hook"))
        assert ok.success
        checks = _checks(ok)
        assert checks["segments/segment_members:upstream_checks_passed"].passed
        assert checks["exports/buyers:no_suppressed_customers"].passed and checks["exports/buyers:fresh"].passed
        assert (data_dir / "exports" / "buyers" / "LATEST").exists()
        assert sorted(k for r in server.requests for k in r["rows"]) == ["C1", "C2"]  # never C3 (opted out)


def test_a_check_planned_but_never_evaluated_leaves_the_last_evaluation_in_force(data_dir):
    """A run that planned the ingest's check and failed before evaluating it (or one still queued behind the
    warehouse's pool) leaves a PLANNED record, newer than the last evaluation. The gate reads the latest
    evaluation: it used to read the PLANNED record and fail with "AttributeError:
    'AssetCheckEvaluationPlanned' object has no attribute 'passed'" (two runs launched at once from the UI,
    or `dg launch` after a run that found the warehouse locked)."""
    from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus

    from orchestration.defs.segments import _failed_at_error

    quarantine = dg.AssetCheckKey(dg.AssetKey(["raw", "orders"]), "quarantine_share")
    gate = dg.AssetCheckKey(dg.AssetKey(["segments", "segment_members"]), "upstream_checks_passed")
    with dg.DagsterInstance.ephemeral() as instance:
        assert not _run(data_dir, instance, _upstream(quarantine_ok=False) + _segment_assets()).success
        # the whole graph again, but raw/orders fails first: every check of the run stays planned
        assert not _run(data_dir, instance, _upstream(quarantine_ok=True, crash=True) + _segment_assets()).success
        for key in (quarantine, gate):
            assert instance.get_latest_asset_check_evaluation_record(key).status == AssetCheckExecutionRecordStatus.PLANNED
        # an export materialized on its own still refuses, for the gate's last evaluation
        alone = _run(data_dir, instance, _upstream(True) + _segment_assets(), selection=[dg.AssetKey(["exports", "buyers"])])
        (failure,) = _step_events(alone, "STEP_FAILURE").values()
        message = failure.event_specific_data.error.message + str(failure.event_specific_data.user_failure_data)
        assert "exports withheld" in message and "upstream_checks_passed" in message and "AttributeError" not in message
        # what segment_membership's gate reads of its ancestors' checks
        (failed,) = _failed_at_error(instance, [quarantine])
        assert failed.startswith("raw/orders:quarantine_share (7.50% of this run's new rows were quarantined, above the 5.00% limit; run ")


def test_a_bad_delivery_loaded_by_a_run_without_exports_holds_back_the_next_export(data_dir):
    """A bad delivery loaded by a run of the raw assets alone (README's backfill command `dagster asset
    materialize --select group:raw`, the UI's Materialize on raw/*) had its quarantine check fail in a run with
    no exports to hold back; the next whole run judged only its own (no) new rows and exported everything the
    bad delivery brought, without a word. Such a failure now holds back the next export once (SPEC §2: never
    for good)."""
    raw_orders = dg.AssetKey(["raw", "orders"])
    with dg.DagsterInstance.ephemeral() as instance:
        assert _run(data_dir, instance, _upstream(quarantine_ok=True) + _segment_assets()).success
        first = (data_dir / "exports" / "buyers" / "LATEST").read_text()
        # the bad delivery, loaded by a run of raw/orders alone: nothing downstream runs
        raw_only = _run(data_dir, instance, _upstream(quarantine_ok=False) + _segment_assets(), selection=[raw_orders])
        assert not _checks(raw_only)["raw/orders:quarantine_share"].passed
        # the next whole run brings nothing new: its own check passes, and the export still waits, saying why
        held = _run(data_dir, instance, _upstream(quarantine_ok=True) + _segment_assets())
        assert not held.success
        gate = _checks(held)["segments/segment_members:upstream_checks_passed"]
        assert not gate.passed and "raw/orders:quarantine_share" in gate.description and raw_only.run_id[:8] in gate.description
        assert "segment_exports" not in _step_events(held, "STEP_START")
        assert (data_dir / "exports" / "buyers" / "LATEST").read_text() == first
        # and only once: the run after it exports
        assert _run(data_dir, instance, _upstream(quarantine_ok=True) + _segment_assets()).success


def test_the_bi_copy_materialized_on_its_own_waits_like_the_exports(data_dir):
    """A run whose blocking checks failed publishes no BI copy (README, "BI tools"): Dagster skips it. Materialized on
    its own (the UI's Materialize on bi/warehouse_copy, `dg launch --assets 'key:"bi/warehouse_copy"'`) it
    published the held-back run's marts and segment members all the same."""
    from orchestration.defs.bi import BI_COPY, bi_warehouse_copy

    with dg.DagsterInstance.ephemeral() as instance:
        assert not _run(data_dir, instance, _upstream(quarantine_ok=False) + _segment_assets() + [bi_warehouse_copy]).success
        assert not (data_dir / "bi" / "warehouse.duckdb").exists()
        alone = _run(data_dir, instance, _upstream(True) + _segment_assets() + [bi_warehouse_copy], selection=[BI_COPY])
        assert not alone.success
        (failure,) = _step_events(alone, "STEP_FAILURE").values()
        message = failure.event_specific_data.error.message + str(failure.event_specific_data.user_failure_data)
        assert "withheld" in message and "upstream_checks_passed" in message
        assert not (data_dir / "bi" / "warehouse.duckdb").exists()


def test_tables_a_dbt_build_replaced_before_its_tests_reported_hold_back_exports_syncs_and_the_bi_copy(data_dir, monkeypatch):
    """A run killed inside a dbt step (kill -9, the OOM killer) left marts rebuilt by a build whose tests never
    reported: dagster-dbt hands a step's evaluations to Dagster once dbt has exited. Members and exports
    materialized from the UI then passed the gates on the run before's evaluations and published a bad mart's
    segment (UI review). The step's mark (what a killed step leaves: dbt_runner.mark_untested) holds them back
    until a whole build of that step has reported."""
    import duckdb

    from orchestration import dbt as dbt_runner
    from orchestration.defs.bi import BI_COPY, bi_warehouse_copy

    monkeypatch.setenv("TEST_GATE_SECRET", "gate")
    members, export = dg.AssetKey(["segments", "segment_members"]), dg.AssetKey(["exports", "buyers"])
    with dg.DagsterInstance.ephemeral() as instance, ScriptedServer([], "gate") as server:
        assets = _upstream(quarantine_ok=True) + _segment_assets(server.url + "/hook") + [bi_warehouse_copy]
        assert _run(data_dir, instance, assets).success
        first = (data_dir / "exports" / "buyers" / "LATEST").read_text()
        sent = len(server.requests)
        with duckdb.connect(str(data_dir / "warehouse.duckdb")) as con:
            dbt_runner.mark_untested(con, ["dbt_models"], "0b35c56c-killed-run", "dbt_models")

        # the segment members and the exports, materialized on their own
        held = _run(data_dir, instance, assets, selection=[members, dg.AssetKey(["segments", "segment_definitions"]), export])
        assert not held.success
        gate = _checks(held)["segments/segment_members:upstream_checks_passed"]
        assert not gate.passed
        assert "dbt_models (rebuilt by Dagster run 0b35c56c from " in gate.description
        assert "ended before its tests reported to Dagster: build the whole graph" in gate.description
        assert "segment_exports" not in _step_events(held, "STEP_START")
        # each on its own: the export, the sync, the BI copy
        for key, what in ((export, "exports"), (dg.AssetKey(["syncs", "crm"]), "sync to crm"), (BI_COPY, "BI copy")):
            alone = _run(data_dir, instance, assets, selection=[key])
            (failure,) = _step_events(alone, "STEP_FAILURE").values()
            message = failure.event_specific_data.error.message + str(failure.event_specific_data.user_failure_data)
            assert f"{what} withheld" in message and "0b35c56c" in message, (what, message)
        assert (data_dir / "exports" / "buyers" / "LATEST").read_text() == first
        assert len(server.requests) == sent

        # a whole build of the step reports its tests and takes every mark of the step away: everything flows
        with duckdb.connect(str(data_dir / "warehouse.duckdb")) as con:
            dbt_runner.mark_untested(con, ["dbt_models"], "a-later-run", "dbt_models")
            dbt_runner.clear_untested(con, "dbt_models", "a-later-run", whole=False)  # a part of it: the mark stays
            assert len(dbt_runner.untested_builds(con)) == 1
            dbt_runner.clear_untested(con, "dbt_models", "a-later-run", whole=True)
            assert dbt_runner.untested_builds(con) == []
        ok = _run(data_dir, instance, assets)
        assert ok.success
        assert _checks(ok)["segments/segment_members:upstream_checks_passed"].passed
        assert {"segment_exports", "syncs__crm", "bi__warehouse_copy"} <= set(_step_events(ok, "STEP_SUCCESS"))


def test_a_suppression_failure_blocks_every_file_and_request(data_dir, monkeypatch):
    """If membership ever let an opted-out customer in, the blocking check stops exports and syncs."""
    real_build = membership_lib.build_membership

    def leaky_build(con, definitions, computed_at):
        out = real_build(con, definitions, computed_at)
        con.execute("insert into segments.segment_members (segment, segment_version, customer_key) values ('buyers', 1, 'C3')")
        return out

    monkeypatch.setattr("orchestration.defs.segments.build_membership", leaky_build)
    monkeypatch.setenv("TEST_GATE_SECRET", "gate")
    with dg.DagsterInstance.ephemeral() as instance, ScriptedServer([], "gate") as server:
        result = _run(data_dir, instance, _upstream(quarantine_ok=True) + _segment_assets(server.url + "/hook"))
        check = _checks(result)["segments/segment_members:no_suppressed_members"]
        assert not check.passed and "opted out, unreachable or unknown" in check.description
        _assert_held_back(instance, result)
        assert server.requests == []
    assert not (data_dir / "exports").exists() or not any((data_dir / "exports").rglob("*.*"))


def test_an_export_that_fails_its_own_verification_is_not_published_and_holds_back_its_syncs(data_dir, monkeypatch):
    from orchestration.segments import ExportError

    def refusing_export(con, exports_dir, definition, options, **kwargs):
        raise ExportError("buyers.csv: 1 opted-out, unreachable or unknown customers; export withheld")

    monkeypatch.setattr("orchestration.defs.exports.export_segment", refusing_export)
    monkeypatch.setenv("TEST_GATE_SECRET", "gate")
    with dg.DagsterInstance.ephemeral() as instance, ScriptedServer([], "gate") as server:
        result = _run(data_dir, instance, _upstream(quarantine_ok=True) + _segment_assets(server.url + "/hook"))
        assert not result.success
        check = _checks(result)["exports/buyers:no_suppressed_customers"]
        assert not check.passed and "export withheld" in check.description
        failure = _step_events(result, "STEP_FAILURE")["segment_exports"]
        assert "blocking asset check failed" in failure.event_specific_data.error.message
        assert "syncs__crm" not in _step_events(result, "STEP_START")
        assert server.requests == []
    assert not any((data_dir / "exports").rglob("LATEST")) if (data_dir / "exports").exists() else True


def _run_two_buyer_segments(data_dir):
    """A run of membership and exports of two segments with the same members (all_buyers first in name order),
    its ingest check passing: it fails (the tests break one segment's export); its check evaluations by key."""
    two = parse_definitions([("defaults", {}), ("privdom.toml", {
        "all_buyers": {"version": 1, "purpose": "p", "rule": [{"column": "paid_orders", "op": "gte", "value": 1}]},
        "buyers": {"version": 1, "purpose": "p", "rule": [{"column": "paid_orders", "op": "gte", "value": 1}]},
    })])
    assets = _upstream(True) + [build_membership_asset(two, OPTIONS), build_export_asset(two, OPTIONS)]
    with dg.DagsterInstance.ephemeral() as instance:
        result = _run(data_dir, instance, assets)
    assert not result.success
    return result, _checks(result)


def test_a_segment_whose_files_cannot_be_written_holds_back_no_other_and_fails_the_run_naming_it(data_dir):
    """From the exports review: a file-system error on one segment's folder stopped every segment after it, and
    the run's summary said only "DagsterExecutionStepExecutionError: Error occurred while executing op". Now each
    segment is published on its own, the one not written fails its checks, and the step fails naming it."""
    (data_dir / "exports").mkdir()
    (data_dir / "exports" / "all_buyers").write_text("not a folder", encoding="utf-8")  # as root, chmod stops nothing
    result, checks = _run_two_buyer_segments(data_dir)
    assert not checks["exports/all_buyers:no_suppressed_customers"].passed
    assert "not published" in checks["exports/all_buyers:no_suppressed_customers"].description
    assert not checks["exports/all_buyers:fresh"].passed
    # the segment after it in name order is published
    assert checks["exports/buyers:no_suppressed_customers"].passed and checks["exports/buyers:fresh"].passed
    assert (data_dir / "exports" / "buyers" / "LATEST").is_file()
    failure = _step_events(result, "STEP_FAILURE")["segment_exports"].event_specific_data.error
    assert failure.cls_name == "Failure"
    assert "1 segment export(s) could not be written, the others were published: all_buyers:" in failure.message
    assert "exports/all_buyers" in failure.message


def test_a_full_disk_under_duckdbs_copy_holds_back_no_other_segment(data_dir, monkeypatch):
    """DuckDB's COPY raises its own IOException, not an OSError (the diff review): a full disk while it wrote one
    segment's file stopped every segment after it."""
    import duckdb

    from orchestration.segments import exports as exports_lib

    copy = exports_lib._copy

    def full_disk(con, query, params, path, fmt, csv_bom, *more):
        if "all_buyers" in str(path):
            raise duckdb.IOException(f'IO Error: Could not write file "{path}": No space left on device')
        return copy(con, query, params, path, fmt, csv_bom, *more)

    monkeypatch.setattr(exports_lib, "_copy", full_disk)
    result, checks = _run_two_buyer_segments(data_dir)
    assert not checks["exports/all_buyers:no_suppressed_customers"].passed
    assert checks["exports/buyers:no_suppressed_customers"].passed
    assert (data_dir / "exports" / "buyers" / "LATEST").is_file() and not (data_dir / "exports" / "all_buyers" / "LATEST").exists()
    failure = _step_events(result, "STEP_FAILURE")["segment_exports"].event_specific_data.error
    assert failure.cls_name == "Failure" and "all_buyers: IO Error" in failure.message and "No space left" in failure.message


def test_the_run_summary_names_the_exception_a_step_raised_not_dagsters_wrapper():
    from dagster._utils.error import SerializableErrorInfo

    from orchestration.runner import _step_error_message

    cause = SerializableErrorInfo("PermissionError: [Errno 13] Permission denied: '/data/exports/x/.tmp-1'\n", [], "PermissionError")
    wrapped = SerializableErrorInfo(
        'dagster._core.errors.DagsterExecutionStepExecutionError: Error occurred while executing op "segment_exports":\n',
        [], "DagsterExecutionStepExecutionError", cause=cause,
    )
    assert _step_error_message(wrapped) == cause.message
    failure = SerializableErrorInfo("dagster._core.definitions.events.Failure: 2 blocking checks failed\n", [], "Failure")
    assert _step_error_message(failure) == "2 blocking checks failed\n"
    assert _step_error_message(None) == ""


def test_while_exports_wait_an_opted_out_customer_is_still_removed_from_destinations(data_dir, monkeypatch):
    """Privacy review: a delivery of four opt-outs and one bad row was above the quarantine limit, so exports and
    syncs waited, and the opted-out customers stayed tagged and held until the next passing run. While the rest
    waits, the membership step removes held customers who opted out or became unreachable, and only them."""
    from orchestration.warehouse import connect

    monkeypatch.setenv("TEST_GATE_SECRET", "gate")
    with dg.DagsterInstance.ephemeral() as instance, ScriptedServer([], "gate") as server:
        assert _run(data_dir, instance, _upstream(quarantine_ok=True) + _segment_assets(server.url + "/hook")).success
        assert server.members == {"C1": 1, "C2": 1}
        con = connect(data_dir / "warehouse.duckdb")
        con.execute("update marts.dim_customers set opted_out = true, is_reachable = false where customer_key = 'C2'")
        con.execute("update marts.dim_customers set paid_orders = 0 where customer_key = 'C1'")  # left: waits
        con.execute("insert into marts.dim_customers by name select * replace ('C4' as customer_key, 3 as paid_orders) "
                    "from marts.dim_customers where customer_key = 'C1'")  # joined: waits
        con.close()
        held = _run(data_dir, instance, _upstream(quarantine_ok=False) + _segment_assets(server.url + "/hook"))
        assert not held.success
        _assert_held_back(instance, held)
        assert server.removed == {"C2": 1} and server.remove_reasons == {"C2": "opted_out"}
        assert server.members == {"C1": 1, "C2": 1}  # nothing added; C1 not removed
        materialization = next(e for e in held.get_asset_materialization_events()
                               if e.asset_key == dg.AssetKey(["segments", "segment_members"]))
        assert materialization.materialization.metadata["removed_while_exports_wait"].value == {"crm": 1}


def _data_age_check(data):
    """The membership step run on `data`'s warehouse: its source_data_age evaluation (a warning, never a block)."""
    with dg.DagsterInstance.ephemeral() as instance:
        result = _run(data, instance, _upstream(quarantine_ok=True) + _segment_assets())
        assert result.success
        return _checks(result)["segments/segment_members:source_data_age"]


def test_a_data_end_in_the_future_is_warned_of_not_taken_as_fresh(tmp_path):
    """"Now" is the data's end (SPEC §4): one row dated years ahead, in a batch dated ahead too (no contract rule
    stops it), made every customer lapsed, and source_data_age passed, since its age against the wall clock was
    negative (it even silenced the warning of data that had stopped arriving). A day ahead is tolerated; beyond,
    the check warns, and never blocks."""
    import datetime as dt

    now = dt.datetime.now(dt.UTC)
    for ahead_days, warned in ((0.5, False), (400, True)):
        data = tmp_path / f"ahead{ahead_days}"
        data.mkdir()
        end = now + dt.timedelta(days=ahead_days)
        write_dim_customers(data / "warehouse.duckdb", [customer("C1", paid_orders=1, data_end_at=end)])
        age = _data_age_check(data)
        assert age.passed is not warned, (ahead_days, age.description)
        if warned:
            assert "days after now" in age.description and "in the future" in age.description
    from orchestration.defs.segments import data_age_problem

    assert data_age_problem(-0.9, 2.0) is None and data_age_problem(3.0, 2.0).startswith("the data ends 3.0 days before now")


def test_a_source_that_stopped_arriving_is_warned_of_by_name(tmp_path):
    """"Now" is the data's end whichever source set it (SPEC §4): orders that stop while the channel events go on
    make paying customers dormant and send them to win-back segments, and nothing said so (the calendar review).
    source_data_age names each source whose newest row is more than [exports] warn_source_lag_days (7) before
    the data's end; a source without rows is not one."""
    import datetime as dt

    from orchestration.defs.segments import source_lag_problem
    from orchestration.warehouse import connect

    end = dt.datetime(2025, 9, 30, 12, 0, tzinfo=dt.UTC)
    assert source_lag_problem({"channel_events": end, "orders": end - dt.timedelta(days=7)}, end, 7.0) is None
    text = source_lag_problem({"channel_events": end, "orders": end - dt.timedelta(days=227.5),
                               "referrals": end - dt.timedelta(days=8)}, end, 7.0)
    assert text.startswith("a source's newest row is far before the data's end (2025-09-30 12:00 UTC; warn above 7 days): "
                           "orders 227.5 days, referrals 8.0 days before it")
    assert source_lag_problem({"orders": end - dt.timedelta(days=30)}, end, 30.0) is None

    now = dt.datetime.now(dt.UTC)
    for orders_behind, warned in ((3, False), (30, True)):
        data = tmp_path / f"behind{orders_behind}"
        data.mkdir()
        write_dim_customers(data / "warehouse.duckdb", [customer("C1", paid_orders=1, data_end_at=now)])
        con = connect(data / "warehouse.duckdb")
        try:
            con.execute("create schema if not exists staging")
            con.execute("create table staging.stg_channel_events as select ?::timestamptz as occurred_at", [now])
            con.execute("create table staging.stg_orders__versions as select ?::timestamptz as updated_at",
                        [now - dt.timedelta(days=orders_behind)])
            con.execute("create table staging.stg_referrals__versions (updated_at timestamptz)")  # no rows
        finally:
            con.close()
        age = _data_age_check(data)
        assert age.passed is not warned, (orders_behind, age.description)
        if warned:
            assert "orders 30.0 days before it" in age.description and "channel_events" not in age.description
            assert "referrals" not in age.description
        assert set(age.metadata["source_ends"].value) == {"channel_events", "orders"}


def test_with_no_data_loaded_the_data_age_check_says_why_it_warns():
    """A run on an empty landing zone (or one whose every file was rejected) has no data end: source_data_age
    does not pass, and used to say nothing (`[WARN] segments/segment_members · source_data_age`, bare, in the run's
    summary). It says why."""
    from orchestration.defs.segments import data_age_problem

    assert data_age_problem(None, 2.0) == "no data loaded yet: the warehouse has no data end to compare with the wall clock"


def test_a_failure_planned_before_but_evaluated_after_the_gate_still_holds_once():
    """Diff review: the check history is in the order checks were planned, not evaluated. A raw-only run planned
    first and evaluated after a whole run's gate sat behind that run's own (passing, earlier) evaluation, and the
    scan stopped there: its failure was never seen."""
    from types import SimpleNamespace

    from dagster._core.definitions.asset_checks.asset_check_evaluation import AssetCheckEvaluation

    from orchestration.defs.segments import _failed_at_error_since

    key = dg.AssetCheckKey(dg.AssetKey(["raw", "orders"]), "quarantine_share")

    def record(at: float, passed: bool, run_id: str):
        evaluation = AssetCheckEvaluation(asset_key=key.asset_key, check_name=key.name, passed=passed,
                                          severity=dg.AssetCheckSeverity.ERROR, description="why")
        return SimpleNamespace(event=SimpleNamespace(timestamp=at), evaluation=evaluation, run_id=run_id)

    # newest planned first: the whole run's passing evaluation (at 10, before its gate at 11), then the raw-only
    # run's failure (planned earlier, evaluated at 12, after the gate)
    history = [record(10.0, True, "whole000"), record(12.0, False, "rawonly0")]
    storage = SimpleNamespace(get_asset_check_execution_history=lambda *a, **k: history)
    failed = _failed_at_error_since(SimpleNamespace(event_log_storage=storage), [key], since=11.0)
    assert failed == ["raw/orders:quarantine_share (why; run rawonly0, which exported nothing: the next export waits once)"]
