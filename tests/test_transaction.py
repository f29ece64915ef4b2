"""orchestration.warehouse.transaction: the one BEGIN/COMMIT/ROLLBACK every multi-statement write uses."""

from __future__ import annotations

import duckdb
import pytest

from orchestration.warehouse import transaction


def test_commits_the_block_or_rolls_it_back_keeping_the_error():
    con = duckdb.connect()
    con.execute("CREATE TABLE t (x INTEGER)")
    with transaction(con):
        con.execute("INSERT INTO t VALUES (1)")
    with pytest.raises(ValueError, match="boom"):
        with transaction(con):
            con.execute("INSERT INTO t VALUES (2)")
            raise ValueError("boom")
    assert con.execute("SELECT x FROM t").fetchall() == [(1,)]


def test_a_rollback_that_cannot_run_does_not_hide_the_error():
    con = duckdb.connect()
    con.execute("CREATE TABLE t (x INTEGER)")
    with pytest.raises(ValueError, match="after the commit"):
        with transaction(con):
            con.execute("INSERT INTO t VALUES (1)")
            con.execute("COMMIT")  # the transaction is over: ROLLBACK fails ("no transaction is active")
            raise ValueError("after the commit")
    assert con.execute("SELECT x FROM t").fetchall() == [(1,)]
    with transaction(con):  # and the connection is usable again
        con.execute("INSERT INTO t VALUES (2)")
    assert con.execute("SELECT count(*) FROM t").fetchone() == (2,)
