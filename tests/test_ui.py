"""`privdom ui` serves the Dagster UI on 127.0.0.1: its GraphQL API lists every asset and asset check of the
code location (tests/expected_asset_keys.txt), with no load errors and a description on every asset."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.slow

PRIVDOM = Path(sys.executable).with_name("privdom")
EXPECTED = Path(__file__).with_name("expected_asset_keys.txt")

WORKSPACE_QUERY = """
{ workspaceOrError { __typename
    ... on Workspace { locationEntries { name loadStatus
        locationOrLoadError { __typename ... on PythonError { message } } } }
    ... on PythonError { message } } }
"""
ASSETS_QUERY = """
{ assetNodes { assetKey { path } groupName description
    assetChecksOrError { __typename ... on AssetChecks { checks { name } } } } }
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _graphql(port: int, query: str) -> dict:
    response = httpx.post(f"http://127.0.0.1:{port}/graphql", json={"query": query}, timeout=60)
    response.raise_for_status()
    body = response.json()
    assert "errors" not in body, body
    return body["data"]


@pytest.fixture(scope="module")
def ui(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("ui")
    port = _free_port()
    log = open(data_dir / "ui.log", "w")
    server = subprocess.Popen(
        [str(PRIVDOM), "--data-dir", str(data_dir), "ui", "--host", "127.0.0.1", "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: dagster dev's webserver, daemon and code server
        env={**os.environ, "DAGSTER_DISABLE_TELEMETRY": "1"},
    )
    try:
        deadline = time.monotonic() + 300
        while True:
            assert server.poll() is None, (data_dir / "ui.log").read_text()
            try:
                entries = _graphql(port, WORKSPACE_QUERY)["workspaceOrError"]["locationEntries"]
                if entries and all(e["loadStatus"] == "LOADED" for e in entries):
                    break
            except (httpx.HTTPError, KeyError, TypeError):
                pass
            assert time.monotonic() < deadline, "the UI did not load the code location in time"
            time.sleep(1)
        yield port, entries, data_dir / "ui.log"
    finally:
        try:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        except ProcessLookupError:
            pass
        log.close()


def test_code_location_loads_without_errors(ui):
    _, entries, _ = ui
    assert [e["name"] for e in entries] == ["privdom"]
    assert all(e["locationOrLoadError"]["__typename"] == "RepositoryLocation" for e in entries), entries


def test_every_asset_and_check_is_served(ui):
    port, _, _ = ui
    nodes = _graphql(port, ASSETS_QUERY)["assetNodes"]
    served = set()
    for node in nodes:
        key = "/".join(node["assetKey"]["path"])
        served.add(key)
        checks = node["assetChecksOrError"]
        assert checks["__typename"] == "AssetChecks", checks
        served |= {f"{key}:{c['name']}" for c in checks["checks"]}
    expected = {line for line in EXPECTED.read_text(encoding="utf-8").splitlines() if line and not line.startswith("#")}
    assert served == expected, {"missing": sorted(expected - served), "extra": sorted(served - expected)}


def test_assets_read_as_layers_with_descriptions(ui):
    port, _, _ = ui
    nodes = _graphql(port, ASSETS_QUERY)["assetNodes"]
    for node in nodes:
        layer = node["assetKey"]["path"][0]
        assert node["groupName"] == layer, node
        assert (node["description"] or "").strip(), node["assetKey"]
    assert {"raw", "staging", "intermediate", "marts", "bi"} <= {n["groupName"] for n in nodes}


def test_the_server_starts_without_warnings(ui):
    # `dagster dev` warned on every start that it is superseded by `dg dev`; Dagster's own start-up lines are
    # INFO, so any WARNING or ERROR line is news a user would have to read.
    _, _, log = ui
    lines = log.read_text(encoding="utf-8").splitlines()
    assert not [line for line in lines if "superseded" in line or " - WARNING - " in line or " - ERROR - " in line], lines
