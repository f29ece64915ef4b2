"""Shared fixtures: a throw-away data directory, its settings and an in-memory DuckDB warehouse."""

from __future__ import annotations

import os
from pathlib import Path

import duckdb
import pytest

os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")


@pytest.fixture
def settings(tmp_path):
    from orchestration.settings import load_settings

    return load_settings(tmp_path / "data")


@pytest.fixture
def con():
    c = duckdb.connect()
    yield c
    c.close()


@pytest.fixture
def land(settings):
    """land('orders/orders_20240131.csv', text_or_bytes) writes a file under the landing dir."""

    def _land(rel: str, content: str | bytes) -> Path:
        p = settings.landing_dir / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str):
            p.write_text(content, encoding="utf-8")
        else:
            p.write_bytes(content)
        return p

    return _land


@pytest.fixture(scope="session")
def dbt_manifest(tmp_path_factory):
    """`dbt parse` once per session: @dbt_assets reads target/manifest.json when the definitions load."""
    from orchestration import dbt as dbt_runner
    from orchestration.settings import load_settings

    data_dir = tmp_path_factory.mktemp("parse")
    return dbt_runner.parse(load_settings(data_dir))
