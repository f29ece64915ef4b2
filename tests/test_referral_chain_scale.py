"""A deep referral chain (a distribution network's long line of 分销 invitations) must not make the marts'
size grow with the square of its depth. int_customers__referral_depth used to carry every customer's whole
chain of keys as text ('>K1>K2>…>'), so N generations held about 11·N²/2 bytes: 2.2 GB at 20,000 (the build
took 47 s, then fct_referrals ran out of memory and the run failed). Here 8,000 generations (≈350 MB of
chains) run under the smallest memory limit privdom accepts; loops are still found (the last referee invites
the root back)."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

pytestmark = pytest.mark.slow

PRIVDOM = Path(sys.executable).with_name("privdom")
DEPTH = 8000


def _landing(data_dir: Path) -> None:
    t0 = dt.datetime(2024, 1, 1, 9, 0, 0)
    events = data_dir / "landing" / "channel_events" / "channel_events_20240601.csv"
    events.parent.mkdir(parents=True)
    events.write_text("event_id,occurred_at,channel,event_type,member_id\n"
                      f"e0,{t0:%Y-%m-%d %H:%M:%S},wecom,add_contact,M0\n", encoding="utf-8")
    lines = ["referral_id,updated_at,invited_at,mechanism,status,referrer_member_id,referee_member_id"]
    for i in range(DEPTH):
        t = f"{t0 + dt.timedelta(minutes=i + 1):%Y-%m-%d %H:%M:%S}"
        lines.append(f"R{i},{t},{t},share_link,clicked,M{i},M{i + 1}")
    t = f"{t0 + dt.timedelta(minutes=DEPTH + 1):%Y-%m-%d %H:%M:%S}"
    lines.append(f"LOOP,{t},{t},share_link,clicked,M{DEPTH},M0")  # the bottom invites the root: closes a loop
    lines.append(f"SIB,{t},{t},share_link,clicked,M{DEPTH},M{DEPTH - 1}")  # its own referrer: on its chain too
    lines.append(f"UP,{t},{t},share_link,clicked,M5,M{DEPTH}")  # a referee below the referrer: no loop
    referrals = data_dir / "landing" / "referrals" / "referrals_20240601.csv"
    referrals.parent.mkdir(parents=True)
    referrals.write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_a_deep_referral_chain_builds_in_little_memory(tmp_path):
    data_dir = tmp_path / "data"
    _landing(data_dir)
    env = {**os.environ, "PRIVDOM_DUCKDB_MEMORY_LIMIT": "256MB"}
    run = subprocess.run([str(PRIVDOM), "--data-dir", str(data_dir), "run"], capture_output=True, text=True,
                         timeout=900, env=env)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    con = duckdb.connect(str(data_dir / "bi" / "warehouse.duckdb"), read_only=True)
    generations = dict(con.execute("select referral_id, generation from marts.fct_referrals").fetchall())
    assert [generations[f"R{i}"] for i in (0, 1, DEPTH - 1)] == [1, 2, DEPTH]
    assert generations["LOOP"] is None and generations["SIB"] is None
    assert generations["UP"] == 6
    assert con.execute("select max(max_generation) from marts.fct_fission_summary").fetchone()[0] == DEPTH
