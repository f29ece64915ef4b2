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
    with pytest.raises(SettingsError, match=r"PRIVDOM_DBT_TARGET=spark: .*'duckdb' target only.*PRIVDOM_SPARK_METHOD=thrift and `dbt build --target spark`"):
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


@pytest.mark.parametrize("how", ["environment", "option"])
def test_privdom_dbt_refuses_the_spark_session_method_it_cannot_serve(tmp_path, how):
    """From the Spark review: `privdom dbt` on the spark target with the session method started a new, empty local
    Spark in dbt's process, failed with a long stack trace about `raw`.`orders`, and left metastore_db/ and
    derby.log in dbt_project/. It refuses in one line instead; with the thrift method it goes on to dbt."""
    from orchestration.settings import DBT_PROJECT_DIR

    env = {k: v for k, v in os.environ.items() if k not in ("PRIVDOM_HOME", "PRIVDOM_DBT_TARGET", "PRIVDOM_SPARK_METHOD")}
    args = ["dbt", "run", "--select", "stg_orders"]
    if how == "environment":
        env["PRIVDOM_DBT_TARGET"] = "spark"
    else:
        args += ["--target", "spark"]
    result = subprocess.run([str(PRIVDOM), "--data-dir", str(tmp_path), *args],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.startswith("privdom: privdom dbt --target spark: the Spark target's session method")
    assert "PRIVDOM_SPARK_METHOD=thrift" in result.stderr and "Traceback" not in result.stderr
    assert not (DBT_PROJECT_DIR / "metastore_db").exists()
    # another target of the user's own (a databricks one, docs/scale-out.md) is dbt's to judge, not refused here
    other = subprocess.run([str(PRIVDOM), "--data-dir", str(tmp_path), "dbt", "run", "--target", "databricks"],
                           capture_output=True, text=True, env=env, timeout=300)
    assert "session method" not in other.stderr + other.stdout
    # `dbt ls` reads no warehouse: no refusal (dbt answers from the manifest)
    listed = subprocess.run([str(PRIVDOM), "--data-dir", str(tmp_path), "dbt", "ls", "--select", "stg_orders", "--target", "spark"],
                            capture_output=True, text=True, env=env, timeout=300)
    assert "session method" not in listed.stderr
