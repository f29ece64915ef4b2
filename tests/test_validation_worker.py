"""The validation worker of `privdom run` (orchestration/validation_worker.py): GX validates the run's new rows in a
process that imported it ahead of time, with the same results as in the run's process; errors come back, and a
worker that is gone (or was interrupted mid-request) is given up for validation in the run's process."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time

import pandas as pd
import pytest

from orchestration import dbt as dbt_runner
from orchestration.ingest import ingest_source
from orchestration.quality import SpilledFrame, validate_contract
from orchestration import validation_worker as gx_worker
from test_ingest_rules import CASES, GOOD, HEADERS


def _same(a, b) -> None:
    """Two ContractValidations alike in everything but their wall time."""
    assert dataclasses.replace(a, seconds=0.0) == dataclasses.replace(b, seconds=0.0)


@pytest.fixture
def dirty_orders(con, settings, land):
    """A run's new orders (a SpilledFrame) with a row breaking each orders rule, as ingestion hands them over."""
    bad = [row for (s, _), (row, _) in CASES.items() if s == "orders"]
    land("orders/dt=2024-01-31/a.csv", "\n".join([HEADERS["orders"], GOOD["orders"], *bad]) + "\n")
    report = ingest_source(con, "orders", settings, "run")
    assert isinstance(report.frame, SpilledFrame) and len(report.frame) == len(bad) + 1
    yield report
    report.frame.close()


@pytest.fixture
def worker():
    w = gx_worker.ValidationWorker().start()
    yield w
    w.stop()


def test_the_worker_validates_as_this_process_does(dirty_orders, worker):
    here = validate_contract("orders", dirty_orders.frame, memory_limit="1GB")
    there = worker.validate("orders", dirty_orders.frame, memory_limit="1GB")
    assert not there.success and sum(there.unexpected_by_rule.values()) > 0
    assert there.unexpected_by_rule == dirty_orders.quarantine_by_rule
    _same(there, here)
    assert there.seconds > 0
    # the parts are still the run's: the worker read them and left them
    assert all(os.path.exists(p) for p in dirty_orders.frame.state()[0])
    assert worker.alive


def test_frames_without_rows_or_not_spilled_are_validated_here(worker, monkeypatch):
    sent = []
    monkeypatch.setattr(worker, "_conn", type("C", (), {"send": sent.append, "recv": lambda self: None})())
    assert worker.validate("referrals", None).evaluated_rows == 0
    assert worker.validate("referrals", pd.DataFrame()).evaluated_rows == 0
    assert sent == []


def test_an_error_in_the_worker_is_raised_here(dirty_orders, worker, tmp_path):
    parts, files, select = dirty_orders.frame.state()
    missing = SpilledFrame.from_state(([str(tmp_path / "gone.parquet")], files, select))
    with pytest.raises(Exception) as here:
        validate_contract("orders", missing)
    with pytest.raises(Exception) as there:
        worker.validate("orders", missing)
    assert type(there.value) is type(here.value)
    # (which expectation's query meets the missing file first is GX's order, not always the same)
    for text in (str(here.value), str(there.value)):
        assert "No files found that match the pattern" in text and "gone.parquet" in text
    assert any("raised in the validation worker" in note for note in getattr(there.value, "__notes__", []))
    # the worker is still there for the next validation
    assert worker.alive
    _same(worker.validate("orders", dirty_orders.frame), validate_contract("orders", dirty_orders.frame))


def test_a_worker_that_died_is_given_up_and_validation_goes_on_here(dirty_orders, worker, caplog):
    pid = worker.process.pid
    os.kill(pid, signal.SIGKILL)
    worker.process.wait(timeout=10)
    with caplog.at_level(logging.WARNING, logger="orchestration.validation_worker"):
        result = worker.validate("orders", dirty_orders.frame)
    _same(result, validate_contract("orders", dirty_orders.frame))
    assert not worker.alive and worker.process is None
    assert "validating in this process from now on" in caplog.text


def test_the_active_worker_serves_validate_until_released(dirty_orders, monkeypatch):
    monkeypatch.delenv(gx_worker.ENV_SWITCH, raising=False)
    with gx_worker.warm_validation() as w:
        assert w is not None and gx_worker._ACTIVE is w
        calls = []
        real = w.validate
        monkeypatch.setattr(w, "validate", lambda *a, **k: calls.append(a) or real(*a, **k))
        gx_worker.validate("orders", dirty_orders.frame)
        assert len(calls) == 1
        assert w.alive  # it validated: no fallback
        process = w.process
        gx_worker.release()  # what a dbt step does
        assert not w.alive and process.poll() is not None
        # after the release, validation happens here
        _same(gx_worker.validate("orders", dirty_orders.frame), validate_contract("orders", dirty_orders.frame))
        assert len(calls) == 1
    assert gx_worker._ACTIVE is None


def test_privdom_gx_warm_0_starts_no_worker(monkeypatch):
    monkeypatch.setenv(gx_worker.ENV_SWITCH, "0")
    with gx_worker.warm_validation() as w:
        assert w is None and gx_worker._ACTIVE is None


def test_the_switch_is_not_part_of_what_dbt_parses():
    assert gx_worker.ENV_SWITCH in dbt_runner._NOT_PARSE_ENV


def test_the_worker_ends_with_the_process_that_started_it(tmp_path):
    """A run's process killed without stopping its worker: the worker sees its connection close and ends."""
    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent("""
        import os, sys
        from orchestration import validation_worker as worker
        w = worker.ValidationWorker().start()
        print(w.process.pid, flush=True)
        os._exit(0)  # no stop(): as a killed run
    """), encoding="utf-8")
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, check=True)
    pid = int(out.stdout.split()[0])
    deadline = time.monotonic() + 60  # it notices once it has warmed up
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        # a zombie (its parent gone, reaped by init) also counts as ended
        try:
            with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
                if f.read().split(")")[-1].split()[0] == "Z":
                    break
        except FileNotFoundError:
            break
        time.sleep(0.2)
    else:
        os.kill(pid, signal.SIGKILL)
        pytest.fail("the worker outlived the process that started it")


def test_a_request_interrupted_before_its_reply_retires_the_worker(dirty_orders, worker, monkeypatch):
    """Its reply would otherwise answer the next request (another source's validation)."""
    conn = worker._conn

    class Interrupted:
        def send(self, obj):
            conn.send(obj)

        def recv(self):
            raise KeyboardInterrupt

        def close(self):
            conn.close()

    monkeypatch.setattr(worker, "_conn", Interrupted())
    with pytest.raises(KeyboardInterrupt):
        worker.validate("orders", dirty_orders.frame)
    assert not worker.alive and worker.process is None
    _same(worker.validate("orders", dirty_orders.frame), validate_contract("orders", dirty_orders.frame))


def test_an_exception_that_cannot_come_back_is_told_as_text():
    exc = gx_worker._remote_error("orders", b"not a pickle", "WeirdError: it broke", "Traceback ...")
    assert isinstance(exc, RuntimeError)
    assert "validation of orders failed in the validation worker: WeirdError: it broke" in str(exc)
    back = gx_worker._remote_error("orders", __import__("pickle").dumps(ValueError("bad value")), "ValueError: bad value", "TB")
    assert type(back) is ValueError and str(back) == "bad value"
    assert any("raised in the validation worker" in note for note in back.__notes__)


def test_a_run_validates_through_its_worker_and_ends_it(settings, monkeypatch):
    """`privdom run` starts the worker before anything else and stops it when the run is over."""
    from orchestration import runner

    monkeypatch.delenv(gx_worker.ENV_SWITCH, raising=False)
    seen = []

    def locked(settings, *, verbose, full_refresh, before_run=None):
        worker = gx_worker._ACTIVE
        seen.append((worker is not None and worker.alive, worker.process if worker else None))
        return "result"

    monkeypatch.setattr(runner, "_run_pipeline_locked", locked)
    monkeypatch.setattr(dbt_runner, "warm_dbt", contextlib.nullcontext)
    assert runner.run_pipeline(settings) == "result"
    [(alive, process)] = seen
    assert alive and process is not None
    assert process.poll() is not None  # ended with the run
    assert gx_worker._ACTIVE is None
