"""The pipeline's steps work on DuckDB: `privdom run`, `privdom demo` and the Dagster dbt steps refuse another dbt
target (PRIVDOM_DBT_TARGET=spark) with a clear message, before anything is written (docs/scale-out.md)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from orchestration import dbt as dbt_runner
from orchestration.settings import SettingsError

PRIVDOM = Path(sys.executable).with_name("privdom")


def _privdom(data_dir: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PRIVDOM_HOME", "PRIVDOM_DBT_TARGET")}
    env["PRIVDOM_DBT_TARGET"] = "spark"
    return subprocess.run([str(PRIVDOM), "--data-dir", str(data_dir), *args],
                          capture_output=True, text=True, env=env, timeout=300)


def test_the_pipeline_target_is_duckdb(monkeypatch):
    assert dbt_runner.PIPELINE_TARGET == "duckdb"
    monkeypatch.setattr(dbt_runner, "DBT_TARGET", "duckdb")
    dbt_runner.require_pipeline_target()  # no error
    monkeypatch.setattr(dbt_runner, "DBT_TARGET", "spark")
    with pytest.raises(SettingsError, match=r"PRIVDOM_DBT_TARGET=spark: .*'duckdb' target only.*dbt build --target spark"):
        dbt_runner.require_pipeline_target()


def test_privdom_run_refuses_the_spark_target_before_it_writes(tmp_path):
    data_dir = tmp_path / "data"
    result = _privdom(data_dir, "run")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "PRIVDOM_DBT_TARGET=spark" in result.stderr and "docs/scale-out.md" in result.stderr
    assert "Traceback" not in result.stderr
    assert not data_dir.exists()  # not even its Dagster home


def test_privdom_demo_refuses_the_spark_target_before_it_generates(tmp_path):
    result = _privdom(tmp_path, "demo", "--customers", "50", "--days", "5")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "PRIVDOM_DBT_TARGET=spark" in result.stderr
    assert not (tmp_path / "landing").exists()
    assert not (tmp_path / "warehouse.duckdb").exists()
