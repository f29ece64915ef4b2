"""The summary `privdom run` prints ends with commands to paste into a shell: they must name this data directory,
whatever its path holds (spaces, quotes, Chinese)."""

from __future__ import annotations

import shlex

from orchestration.runner import PipelineResult
from orchestration.settings import load_settings


def _commands(text: str) -> tuple[list[str], list[str]]:
    query = next(line for line in text.splitlines() if line.strip().startswith("query"))
    ui = next(line for line in text.splitlines() if line.strip().startswith("UI"))
    return shlex.split(query.split("query", 1)[1]), shlex.split(ui.split("UI", 1)[1].split("→")[0])


def test_the_printed_commands_quote_an_odd_data_directory_and_work(tmp_path, monkeypatch):
    """The query command opens the BI copy, never the warehouse (a reader holding it open stops the next run),
    with this installation's Python (the duckdb package has no command-line tool, and README's setup does not
    activate the virtual environment): run as printed, it lists the copy's tables. The UI command names the
    console script that is on PATH, or the one beside this Python."""
    import subprocess
    import sys
    from pathlib import Path

    import duckdb

    monkeypatch.delenv("PRIVDOM_HOME", raising=False)
    monkeypatch.chdir(tmp_path)
    odd = tmp_path / "我的 数据 it's"
    (odd / "bi").mkdir(parents=True)
    with duckdb.connect(str(odd / "bi" / "warehouse.duckdb")) as con:
        con.execute("create schema marts; create table marts.dim_customers as select 1 as customer_key")
    text = PipelineResult(load_settings(odd), "0123456789abcdef", True, 1.0).describe()
    query_cmd, ui_cmd = _commands(text)
    assert query_cmd[0] == sys.executable and str(odd / "bi" / "warehouse.duckdb") in query_cmd[-1]
    listed = subprocess.run(query_cmd, capture_output=True, text=True, check=True).stdout
    assert "dim_customers" in listed and "marts" in listed
    script = str(Path(sys.executable).parent / "privdom")
    assert ui_cmd[0] in ("privdom", script) and ui_cmd[1:] == ["--data-dir", str(odd), "ui"]
    # the default directory is named too: privdom sets PRIVDOM_HOME for its run, the user's shell may not have it
    plain = PipelineResult(load_settings(tmp_path / "data"), "0123456789abcdef", True, 1.0).describe()
    assert "query" not in plain  # no BI copy yet
    ui = next(line for line in plain.splitlines() if line.strip().startswith("UI"))
    assert shlex.split(ui.split("UI", 1)[1].split("→")[0])[1:] == ["--data-dir", str(tmp_path / "data"), "ui"]


def test_landing_files_outside_the_source_folders_are_named(tmp_path):
    """landing/Orders/, landing/customers/ or a file straight in landing/ is read by no source: the summary says
    so (a run used to succeed without a word about them). Hidden and `_` names are not deliveries."""
    settings = load_settings(tmp_path / "data")
    for rel in ("Orders/orders_20240301.csv", "customers/c_20240101.csv", "orders_20240131.csv", "orders/ok_20240131.csv",
                ".DS_Store", "_SUCCESS", "Orders/.hidden.csv"):
        (settings.landing_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        (settings.landing_dir / rel).write_text("x", encoding="utf-8")
    from orchestration.ingest.files import stray_files

    strays = stray_files(settings.landing_dir)
    assert strays == ["Orders/orders_20240301.csv", "customers/c_20240101.csv", "orders_20240131.csv"]
    text = PipelineResult(settings, "0123456789abcdef", True, 1.0, stray_files=strays).describe()
    assert "NOT READ: 3 file(s)" in text and "Orders/orders_20240301.csv" in text


def test_results_not_published_yet_are_said_to_be_so(tmp_path):
    """A first run whose blocking check failed built no BI copy and no export: the summary says so instead of
    listing paths that do not exist."""
    settings = load_settings(tmp_path / "data")
    text = PipelineResult(settings, "0123456789abcdef", False, 1.0).describe()
    assert "BI copy" in text and "(not published yet: a run publishes it once its checks pass)" in text
    assert "(none yet: a run exports once its checks pass)" in text
    (settings.exports_dir / "one_time_buyers").mkdir(parents=True)
    (settings.exports_dir / "one_time_buyers" / "LATEST").write_text("x", encoding="utf-8")
    assert "none yet" not in PipelineResult(settings, "0123456789abcdef", True, 1.0).describe()


def test_an_empty_landing_zone_is_pointed_out_and_long_table_names_stay_aligned(tmp_path):
    settings = load_settings(tmp_path / "data")
    empty = [(source, 0, 0, 0, 0, 0, 0) for source in ("channel_events", "orders", "referrals")]
    tables = [("marts", "dim_customers", 1250370), ("intermediate", "int_customers__relationship_months", 7)]
    text = PipelineResult(settings, "0123456789abcdef", True, 1.0, ledger=empty, tables=tables).describe()
    assert f"no landing files yet: deliver batch files to {settings.landing_dir}/<source>/" in text
    rows = [line for line in text.splitlines() if line.endswith(" rows")]
    assert len(rows) == 2 and len({line.index(" rows") for line in rows}) == 1, rows
    loaded = [("orders", 3, 3, 0, 0, 120, 1)] + empty[1:]
    assert "no landing files" not in PipelineResult(settings, "0123456789abcdef", True, 1.0, ledger=loaded).describe()


def test_a_dbt_tests_check_says_how_many_rows_it_returned():
    """dbt's checks carry no description: the summary says what the test returned (event_id_conflicts: one row per
    conflicting event_id), instead of a bare "[WARN] staging/stg_channel_events · event_id_conflicts"."""
    from types import SimpleNamespace

    import dagster as dg

    from orchestration.runner import _failed_rows

    def evaluation(passed, count):
        return SimpleNamespace(passed=passed, metadata={"dagster_dbt/failed_row_count": dg.MetadataValue.int(count)})

    assert _failed_rows(evaluation(False, 3)) == "3 rows returned"
    assert _failed_rows(evaluation(False, 1)) == "1 row returned"
    assert _failed_rows(evaluation(True, 0)) is None
    assert _failed_rows(SimpleNamespace(passed=False, metadata={})) is None
    # a test whose SQL failed (e.g. a reconciliation whose sum overflows DECIMAL(18,2)) ran to no result: dbt
    # reports it with status "error" and 0 failures, which read "0 rows returned" beside [ERROR]
    errored = SimpleNamespace(passed=False, metadata={"status": dg.MetadataValue.text("error"),
                                                      "dagster_dbt/failed_row_count": dg.MetadataValue.int(0)})
    assert _failed_rows(errored).startswith("dbt could not run this test")
    failed = SimpleNamespace(passed=False, metadata={"status": dg.MetadataValue.text("fail"),
                                                     "dagster_dbt/failed_row_count": dg.MetadataValue.int(2)})
    assert _failed_rows(failed) == "2 rows returned"


def test_a_failed_step_is_one_line_that_names_what_failed():
    """Dagster's message for a blocking check names the checks on the lines after its first, which ends in a
    colon: the summary's one line keeps them (it used to stop at "failed with ERROR severity:")."""
    from orchestration.runner import _first_line

    blocked = ("1 blocking asset check failed with ERROR severity:\n"
               "segments/segment_members: upstream_checks_passed\n")
    assert _first_line(blocked) == (
        "1 blocking asset check failed with ERROR severity: segments/segment_members: upstream_checks_passed")
    assert _first_line("dbt build failed\n  Traceback (most recent call last):\n  ...") == "dbt build failed"
    assert _first_line("\n  \n") == ""
    long = _first_line("x" * 400)
    assert len(long) == 300 and long.endswith("…")


def test_a_failed_dbt_step_is_summarised_by_the_node_that_failed_and_its_error():
    """From the contributor review: the summary said only "DagsterDbtCliRuntimeError: The dbt CLI process with
    command" (the first line of dagster-dbt's message); the failed node and its error were in the run log. The
    message below is dagster-dbt's, as it quotes dbt's log (colours included)."""
    from dagster._utils.error import SerializableErrorInfo

    from orchestration.runner import _first_line, _step_error_message

    message = (
        "The dbt CLI process with command\n\n`/x/.venv/bin/dbt build --exclude-resource-type unit_test`\n\n"
        "failed with exit code `1`. Check the stdout in the Dagster compute logs for the full information about the "
        "error, or view the dbt debug log: /x/dbt_project/target/dbt_models-1a2b3c4-5d6e7f8/dbt.log.\n\n"
        "Errors parsed from dbt logs:\n\n"
        "7 of 24 ERROR creating sql table model marts.fct_channel_weekly ............ [\x1b[31mERROR\x1b[0m in 0.05s]\n"
        "9 of 24 FAIL 1 assert_channel_weekly_reconciles ............................ [\x1b[31mFAIL 1\x1b[0m in 0.02s]\n\n"
        "\x1b[31mFailure in model fct_channel_weekly (models/marts/fct_channel_weekly.sql)\x1b[0m\n\n"
        "  Runtime Error in model fct_channel_weekly (models/marts/fct_channel_weekly.sql)\n"
        '  Binder Error: Table "o" does not have a column named "net_revenue_typo"\n\n  LINE 12: ...\n'
    )
    cause = SerializableErrorInfo(message, [], "DagsterDbtCliRuntimeError")
    wrapped = SerializableErrorInfo('Error occurred while executing op "dbt_models":', [], "DagsterExecutionStepExecutionError", cause=cause)
    assert _first_line(_step_error_message(wrapped)) == (
        'dbt: ERROR creating sql table model marts.fct_channel_weekly: Binder Error: Table "o" does not have a column '
        'named "net_revenue_typo" (and 1 more); dbt log /x/dbt_project/target/dbt_models-1a2b3c4-5d6e7f8/dbt.log'
    )
    # a failing data test alone
    test_only = message.split("7 of 24")[0] + (
        "9 of 24 FAIL 1 assert_channel_weekly_reconciles ........ [FAIL 1 in 0.02s]\n\n"
        "Failure in test assert_channel_weekly_reconciles (tests/assert_channel_weekly_reconciles.sql)\n"
        "  Got 1 result, configured to fail if != 0\n"
    )
    assert _step_error_message(SerializableErrorInfo(test_only, [], "DagsterDbtCliRuntimeError")).startswith(
        "dbt: FAIL 1 assert_channel_weekly_reconciles: Got 1 result, configured to fail if != 0; dbt log /x/")


def test_a_dbt_step_stopped_by_a_full_disk_names_the_write_that_failed():
    """From the resource review: with the warehouse at a file-size limit (`ulimit -f`; a full disk reads the same),
    dbt's DuckDB checkpoint failed and the summary said only "dbt: ERROR creating sql table model
    marts.fct_orders (and 3 more); dbt log …": dbt quotes DuckDB's fatal error under "Unhandled error while
    executing", and its cause on an "Original error:" line. The message below is dagster-dbt's, shortened."""
    from dagster._utils.error import SerializableErrorInfo

    from orchestration.runner import _first_line, _step_error_message

    fatal = ("FATAL Error: Failed: database has been invalidated because of a previous fatal error. The database must "
             "be restarted prior to being used again.\n"
             'Original error: "Failed to create checkpoint because of error: Could not write file '
             '"/d/warehouse.duckdb": File too large"\n\n')
    message = (
        "The dbt CLI process with command\n\n`/x/dbt build --exclude-resource-type unit_test`\n\n"
        "failed with exit code `2`. Check the stdout in the Dagster compute logs for the full information about the "
        "error, or view the dbt debug log: /x/dbt_project/target/dbt_models-1ab7d85-8f7ab7e/dbt.log.\n\n"
        "Errors parsed from dbt logs:\n\n"
        "38 of 136 ERROR creating sql table model marts.fct_orders ...... [\x1b[31mERROR\x1b[0m in 0.17s]\n\n"
        "\x1b[31mUnhandled error while executing target/dbt_models-1ab7d85-8f7ab7e/run/privdom/models/intermediate/"
        "int_customers__rfm.sql\x1b[0m\n" + fatal +
        "39 of 136 ERROR creating sql table model intermediate.int_customers__rfm ....... [\x1b[31mERROR\x1b[0m in 0.02s]\n\n"
        "Encountered an error:\n" + fatal
    )
    text = _first_line(_step_error_message(SerializableErrorInfo(message, [], "DagsterDbtCliRuntimeError")))
    assert text == (
        'dbt: ERROR creating sql table model marts.fct_orders: Failed to create checkpoint because of error: Could not '
        'write file "/d/warehouse.duckdb": File too large (and 1 more); dbt log '
        "/x/dbt_project/target/dbt_models-1ab7d85-8f7ab7e/dbt.log")


def test_time_before_the_run_is_named_when_it_was_long(tmp_path):
    """The soak review saw `succeeded in 20.0 s` for a command that took 331 s: what privdom did before the
    Dagster run began (locks, workers, dbt parse, the definitions) was counted nowhere. From 10 s on, the
    summary names each phase; below that (the definitions alone take ~3 s) it stays quiet."""
    settings = load_settings(tmp_path / "data")
    slow = [("waiting for the locks", 0.0), ("starting workers", 0.2), ("dbt parse", 4.1), ("loading the definitions", 300.4)]
    text = PipelineResult(settings, "0123456789abcdef", True, 20.0, before_run=slow).describe()
    lines = text.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("privdom run 01234567: succeeded in 20.0 s"))
    assert lines[at + 1] == ("  before the run: waiting for the locks 0.0 s, starting workers 0.2 s, dbt parse 4.1 s, "
                             "loading the definitions 300.4 s")
    usual = [("waiting for the locks", 0.0), ("starting workers", 0.1), ("dbt parse", 0.0), ("loading the definitions", 2.9)]
    assert "before the run" not in PipelineResult(settings, "0123456789abcdef", True, 20.0, before_run=usual).describe()


def test_a_step_held_by_a_blocking_check_names_the_check_on_its_line():
    """From the quality-gate review: the summary's failed-step line read "dagster._core.errors.
    DagsterAssetCheckFailedError: 1 blocking asset check failed with ERROR severity:" (Dagster puts the checks on
    the lines after it, and the summary shows a step's first line)."""
    from dagster._utils.error import SerializableErrorInfo

    from orchestration.runner import _first_line, _step_error_message

    error = SerializableErrorInfo(
        "dagster._core.errors.DagsterAssetCheckFailedError: 2 blocking asset checks failed with ERROR severity:\n"
        "segments/segment_members: upstream_checks_passed\nraw/orders: quarantine_share,row_counts_reconcile",
        [], "DagsterAssetCheckFailedError")
    assert _first_line(_step_error_message(error)) == (
        "blocking check failed: segments/segment_members: upstream_checks_passed; "
        "raw/orders: quarantine_share,row_counts_reconcile")


def test_the_steps_a_failure_left_unexecuted_are_named(tmp_path):
    """From the quality-gate review: after a blocked or failed step the summary showed the exports as "kept" and
    said nothing of the steps that did not run (Dagster logs them as text only)."""
    import dagster as dg

    from orchestration.runner import _steps_not_run

    @dg.asset
    def first():
        raise RuntimeError("broken")

    @dg.asset(deps=[first])
    def second():
        return 1

    @dg.asset(deps=[second])
    def third():
        return 1

    @dg.asset
    def apart():
        return 1

    with dg.DagsterInstance.ephemeral() as instance:
        result = dg.materialize([first, second, third, apart], instance=instance, raise_on_error=False)
        assert not result.success
        assert _steps_not_run(instance, result) == ["second", "third"]
    settings = load_settings(tmp_path / "data")
    text = PipelineResult(settings, "0123456789abcdef", False, 1.0, failed_steps=["first: RuntimeError: broken"],
                          not_run=["second", "third"]).describe()
    assert "  failed step: first: RuntimeError: broken\n  not run, after the failure: second, third\n" in text


def test_a_step_out_of_duckdb_memory_says_which_setting_to_raise(tmp_path):
    """Resource review: with duckdb_memory_limit = 256MB at 100k customers the orders' validation ran out of
    memory, and the summary's line (cut at 300 characters) ended before DuckDB's words; nothing named the setting."""
    from dagster._utils.error import SerializableErrorInfo

    from orchestration.runner import _out_of_memory_hint

    cause = SerializableErrorInfo(
        "RuntimeError: GX expectation expect_column_values_to_be_between for rule row.malformed of orders raised: "
        "MetricConfigurationID(metric_name='table.column_types', metric_domain_kwargs_id='x' * 200): "
        "(_duckdb.OutOfMemoryException) Out of Memory Error: failed to allocate data of size 1.0 MiB "
        "(60.3 MiB/61.0 MiB used)", [], "RuntimeError")
    wrapped = SerializableErrorInfo('Error occurred while executing op "raw__orders":', [],
                                    "DagsterExecutionStepExecutionError", cause=cause)
    settings = load_settings(tmp_path / "data", duckdb_memory_limit="256MB")
    assert _out_of_memory_hint(wrapped, settings).startswith(
        "DuckDB ran out of memory (duckdb_memory_limit = 256MB; the validation of a source gets a quarter of it): "
        "raise it in privdom.toml or PRIVDOM_DUCKDB_MEMORY_LIMIT.")
    other = SerializableErrorInfo("PermissionError: [Errno 13] Permission denied: '/d/tmp'", [], "PermissionError")
    assert _out_of_memory_hint(other, settings) == ""


def test_the_dbt_detail_shown_is_the_first_failed_nodes_own():
    """Diff review: the summary paired the first failed node with the first error block dbt quoted, which may be
    another node's; it now takes the block whose heading names the node, the first block when none does."""
    from orchestration.runner import _dbt_failure

    message = (
        "The dbt CLI process with command\n\n`/x/dbt build`\n\nfailed with exit code `1`.\n\n"
        "Errors parsed from dbt logs:\n\n"
        "7 of 24 ERROR creating sql table model marts.fct_orders ............ [ERROR in 0.05s]\n"
        "9 of 24 ERROR creating sql table model marts.dim_customers ......... [ERROR in 0.02s]\n\n"
        "Runtime Error in model dim_customers (models/marts/dim_customers.sql)\n"
        '  Binder Error: column "x" not found\n\n'
        "Runtime Error in model fct_orders (models/marts/fct_orders.sql)\n"
        "  Conversion Error: could not convert string to DECIMAL\n"
    )
    assert _dbt_failure(message) == ("dbt: ERROR creating sql table model marts.fct_orders: Conversion Error: could not "
                                     "convert string to DECIMAL (and 1 more)")
