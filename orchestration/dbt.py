"""Running dbt the same way everywhere: same executable, same profile env vars, same --vars.

dbt's partial parsing is lost when parse and build see different profile env vars or vars, so every dbt
call privdom makes goes through `dbt_args` / `dbt_environment`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from orchestration.settings import DBT_PROJECT_DIR, Settings

DBT_TARGET = os.environ.get("PRIVDOM_DBT_TARGET", "duckdb")
MANIFEST_PATH = DBT_PROJECT_DIR / "target" / "manifest.json"


def dbt_executable() -> Path:
    """The dbt next to this interpreter: dagster-dbt otherwise looks for `dbt` on PATH."""
    candidate = Path(sys.executable).parent / "dbt"
    return candidate if candidate.exists() else Path("dbt")


def dbt_vars_arg(settings: Settings) -> list[str]:
    return ["--vars", json.dumps(settings.dbt_vars(), sort_keys=True, separators=(",", ":"))]


def apply_dbt_environment(settings: Settings) -> None:
    """Export the env vars profiles.yml reads, for this process and the dbt processes it starts."""
    os.environ.update(settings.dbt_env())
    os.environ.setdefault("DBT_SEND_ANONYMOUS_USAGE_STATS", "false")
    # The graph is built in several dbt steps (see defs/dbt.py). "buildable" runs a test that spans two
    # steps (e.g. marts reconciled against staging) in the later step, once all its parents are built,
    # instead of in the first step where a parent does not exist yet.
    os.environ["DBT_INDIRECT_SELECTION"] = "buildable"


def parse(settings: Settings, *, quiet: bool = True) -> Path:
    """`dbt parse` with privdom's env and vars; writes target/manifest.json (read by @dbt_assets at import)."""
    apply_dbt_environment(settings)
    cmd = [
        str(dbt_executable()),
        "parse",
        *(["--quiet"] if quiet else []),
        "--project-dir",
        str(DBT_PROJECT_DIR),
        "--profiles-dir",
        str(DBT_PROJECT_DIR),
        "--target",
        DBT_TARGET,
        *dbt_vars_arg(settings),
    ]
    result = subprocess.run(cmd, cwd=DBT_PROJECT_DIR, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"dbt parse failed:\n{result.stdout}\n{result.stderr}")
    return MANIFEST_PATH
