"""The BI copy (orchestration/bi.py): what BI tools open, in a format their drivers read, and never spoilt by what
a tool left beside it."""

from __future__ import annotations

import duckdb

from orchestration.bi import BI_STORAGE_VERSION, docs_from_manifest, publish


def _warehouse(rows: int) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.execute("create schema marts; create schema segments")
    con.execute(f"create table marts.dim_customers as select 'C' || range as customer_key, 1.50::decimal(18, 2) as net_revenue "
                f"from range({rows})")
    con.execute("create table segments.segment_members as select 'C0' as customer_key, 'vip' as segment")
    return con


def test_the_copy_is_in_a_storage_format_every_duckdb_from_1_0_reads(tmp_path):
    """BI tools' DuckDB drivers and a DuckDB CLI installed on its own are often older than the pipeline's DuckDB:
    DuckDB 1.5 refused a copy in 2.0's format ("version number 69, but we can only read versions between 64
    and 68"). The copy is written in storage format v1.0.0."""
    publication = publish(_warehouse(3), tmp_path / "bi", run_id="run-1")
    with duckdb.connect(str(publication.database), read_only=True) as con:
        (tags,) = con.execute("select tags from duckdb_databases() where database_name = current_database()").fetchone()
        assert tags["storage_version"].startswith(BI_STORAGE_VERSION) and BI_STORAGE_VERSION == "v1.0.0"
        assert con.execute("select count(*), sum(net_revenue) from marts.dim_customers").fetchone() == (3, 4.5)


def test_a_wal_left_by_a_tool_that_wrote_to_the_copy_does_not_spoil_the_next_copy(tmp_path):
    """A tool that opened the copy read-write (DBeaver's default), wrote and died leaves warehouse.duckdb.wal
    beside it: DuckDB replayed it on every later copy and refused to open them ("WAL does not match database
    file"), while the runs reported success. Publishing removes it with the old copy."""
    bi = tmp_path / "bi"
    first = publish(_warehouse(3), bi, run_id="run-1")
    tool = duckdb.connect(str(first.database))
    tool.execute("pragma disable_checkpoint_on_shutdown")
    tool.execute("create table main.scratch as select 42 as x")
    tool.close()
    assert (bi / "warehouse.duckdb.wal").exists()  # what the tool left
    second = publish(_warehouse(5), bi, run_id="run-2")
    assert not (bi / "warehouse.duckdb.wal").exists()
    with duckdb.connect(str(second.database), read_only=True) as con:
        assert con.execute("select count(*) from marts.dim_customers").fetchone() == (5,)
        assert not con.execute("select * from duckdb_tables() where table_name = 'scratch'").fetchall()


def test_every_parquet_file_names_its_publication_and_nothing_temporary_is_left(tmp_path):
    """A reader of the Parquet files can tell which publication each file belongs to (the manifest lists
    them, written last); the files are written before any is renamed into place."""
    bi = tmp_path / "bi"
    publish(_warehouse(3), bi, run_id="run-1")
    publication = publish(_warehouse(4), bi, run_id="run-2")
    assert sorted(publication.parquet_files) == ["parquet/marts/dim_customers.parquet", "parquet/segments/segment_members.parquet"]
    con = duckdb.connect()
    for rel in publication.parquet_files:
        kv = dict(con.execute(f"select key::varchar, value::varchar from parquet_kv_metadata('{bi / rel}')").fetchall())
        assert kv == {"privdom_run_id": "run-2", "privdom_published_at": publication.published_at}, rel
    assert con.execute(f"select count(*) from '{bi / 'parquet/marts/dim_customers.parquet'}'").fetchone() == (4,)
    assert sorted(p.name for p in bi.rglob(".*")) == []  # no temporary file (.name.pid.tmp) is left


def test_the_copy_carries_the_dbt_docs_as_table_and_column_comments(tmp_path):
    """dbt's descriptions (models, and the sources that document the schema segments) become COMMENT ON the copy's
    tables and columns; a column segment_members repeats from dim_customers takes dim_customers' text."""
    manifest = {
        "nodes": {
            "model.privdom.dim_customers": {
                "resource_type": "model", "schema": "marts", "name": "dim_customers", "alias": "dim_customers",
                "description": "One row per customer,\n  as of the data's end.",
                "columns": {
                    "customer_key": {"description": "Stable customer key."},
                    "net_revenue": {"description": "Net revenue in CNY (gross − discount − refund)."},
                    "not_in_the_table": {"description": "A documented column the table does not have."},
                },
            },
            "model.privdom.stg_orders": {  # not a published schema
                "resource_type": "model", "schema": "staging", "name": "stg_orders", "alias": "stg_orders",
                "description": "Staged orders.", "columns": {},
            },
            "test.privdom.unique_x": {"resource_type": "test", "schema": "marts", "name": "unique_x", "description": "x"},
        },
        "sources": {
            "source.privdom.segments.segment_members": {
                "resource_type": "source", "schema": "segments", "name": "segment_members",
                "identifier": "segment_members", "description": "One row per segment and member.",
                "columns": {"segment": {"description": "The segment's name."}, "customer_key": {"description": ""}},
            },
        },
    }
    docs = docs_from_manifest(manifest)
    assert sorted(docs) == ["marts.dim_customers", "segments.segment_members"]
    assert docs["marts.dim_customers"].description == "One row per customer, as of the data's end."
    publication = publish(_warehouse(2), tmp_path / "bi", run_id="run-1", docs=docs)
    with duckdb.connect(str(publication.database), read_only=True) as con:
        tables = dict(con.execute("select schema_name || '.' || table_name, comment from duckdb_tables()").fetchall())
        columns = dict(con.execute(
            "select table_name || '.' || column_name, comment from duckdb_columns() where not internal"
        ).fetchall())
    assert tables == {"marts.dim_customers": "One row per customer, as of the data's end.",
                      "segments.segment_members": "One row per segment and member."}
    assert columns == {
        "dim_customers.customer_key": "Stable customer key.",
        "dim_customers.net_revenue": "Net revenue in CNY (gross − discount − refund).",
        # its own blank description gives way to dim_customers'
        "segment_members.customer_key": "As marts.dim_customers.customer_key at computed_at: Stable customer key.",
        "segment_members.segment": "The segment's name.",
    }


def test_docs_that_cannot_be_written_leave_the_copy_published_without_them(tmp_path, monkeypatch):
    """The comments are a convenience: one that fails (here, every one) rolls the comments back and the copy is
    published with its data, saying why it has no descriptions (the diff review)."""
    from orchestration import bi

    def broken(con, docs):
        return ["COMMENT ON TABLE privdom_bi_copy.marts.no_such_table IS 'x'"]

    monkeypatch.setattr(bi, "_comment_statements", broken)
    docs = {"marts.dim_customers": bi.TableDocs("One row per customer.")}
    publication = publish(_warehouse(2), tmp_path / "bi", run_id="run-1", docs=docs)
    assert publication.comments_error and "no_such_table" in publication.comments_error
    with duckdb.connect(str(publication.database), read_only=True) as con:
        assert con.execute("select count(*) from marts.dim_customers").fetchone() == (2,)


def test_the_copy_does_not_give_away_a_phone_by_its_masked_form_and_its_hash(tmp_path):
    """A masked phone (139****5678) leaves 10,000 candidates; beside an unsalted SHA-256 of the phone, hashing
    them finds the phone (the privacy review rebuilt 801 of 801 phones from the copy in 1.2 s). The copy leaves
    out phone_sha256 and the contact_handle of rows reached by it; the hash stays in the warehouse, for exports."""
    import hashlib

    phones = {"C1": "13912345678", "C2": "13800138000"}
    digest = {k: hashlib.sha256(("86" + p).encode()).hexdigest() for k, p in phones.items()}
    con = duckdb.connect()
    con.execute("create schema marts; create schema segments")
    con.execute("create table marts.dim_customers (customer_key varchar, phone_masked varchar, phone_sha256 varchar)")
    con.executemany("insert into marts.dim_customers values (?, ?, ?)",
                    [[k, p[:3] + "****" + p[-4:], digest[k]] for k, p in phones.items()])
    con.execute("create table segments.segment_members (segment varchar, customer_key varchar, contact_channel varchar, "
                "contact_handle varchar, phone_sha256 varchar)")
    con.executemany("insert into segments.segment_members values ('vip', ?, ?, ?, ?)",
                    [["C1", "official_account", "oOPENID1", digest["C1"]], ["C2", "phone_sha256", digest["C2"], digest["C2"]]])
    publication = publish(con, tmp_path / "bi", run_id="run-1")

    def brute_force(reader: duckdb.DuckDBPyConnection, dim: str, members: str) -> dict[str, str]:
        """What anyone with the copy can do: hash every phone the mask allows, look for it in any column."""
        published = {v for (row,) in reader.execute(f"select list_value(*columns(*)) from {members}").fetchall() for v in row}
        published |= {v for (row,) in reader.execute(f"select list_value(*columns(*)) from {dim}").fetchall() for v in row}
        found = {}
        for key, masked in reader.execute(f"select customer_key, phone_masked from {dim}").fetchall():
            for middle in range(10_000):
                phone = f"{masked[:3]}{middle:04d}{masked[-4:]}"
                if hashlib.sha256(("86" + phone).encode()).hexdigest() in published:
                    found[key] = phone
        return found

    with duckdb.connect(str(publication.database), read_only=True) as reader:
        assert brute_force(reader, "marts.dim_customers", "segments.segment_members") == {}
        assert reader.execute("select customer_key, contact_channel, contact_handle from segments.segment_members "
                              "order by 1").fetchall() == [("C1", "official_account", "oOPENID1"), ("C2", "phone_sha256", None)]
    parquet = tmp_path / "bi" / "parquet"
    assert brute_force(duckdb.connect(), f"'{parquet / 'marts/dim_customers.parquet'}'",
                       f"'{parquet / 'segments/segment_members.parquet'}'") == {}
    # the warehouse keeps the hash: exports and syncs deliver it to ad platforms (SPEC §5)
    assert con.execute("select count(phone_sha256) from marts.dim_customers").fetchone() == (2,)


def _holder(path, read_only: bool):
    """Another process with `path` open in DuckDB (fcntl locks are per process: this one's would not show)."""
    import subprocess
    import sys

    proc = subprocess.Popen(
        [sys.executable, "-c", "import duckdb, sys; c = duckdb.connect(sys.argv[1], read_only=sys.argv[2] == '1'); "
                               "print('open', flush=True); sys.stdin.read()", str(path), "1" if read_only else "0"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "open"
    return proc


def test_a_copy_open_read_write_elsewhere_is_not_replaced(tmp_path):
    """Concurrency review: DuckDB names a database's WAL after its path, so a tool holding the copy open read-write
    while a run replaced it wrote into a WAL that the next open of the new copy replayed (a reader saw 240 of
    520 customers, no error). A run now publishes nothing while a process holds the copy read-write, and says
    which; a read-only reader is no obstacle."""
    import pytest

    from orchestration.bi import BiCopyInUseError

    bi = tmp_path / "bi"
    first = publish(_warehouse(3), bi, run_id="run-1")
    writer = _holder(first.database, read_only=False)
    try:
        with pytest.raises(BiCopyInUseError, match=rf"open read-write in another process \(PID {writer.pid}\)"):
            publish(_warehouse(5), bi, run_id="run-2")
    finally:
        writer.communicate("")
    assert sorted(p.name for p in bi.rglob(".*")) == []  # nothing temporary left
    with duckdb.connect(str(first.database), read_only=True) as con:  # the previous copy stays
        assert con.execute("select count(*) from marts.dim_customers").fetchone() == (3,)
    reader = _holder(first.database, read_only=True)
    try:
        second = publish(_warehouse(5), bi, run_id="run-3")
    finally:
        reader.communicate("")
    with duckdb.connect(str(second.database), read_only=True) as con:
        assert con.execute("select count(*) from marts.dim_customers").fetchone() == (5,)


def test_a_stop_while_the_copy_is_detached_leaves_no_temporary_file(tmp_path):
    """DETACH writes the copy's checkpoint (seconds at 1M customers); a SIGTERM or Ctrl-C there left
    bi/.warehouse.duckdb.<pid>.tmp behind until the next publication (signal review). The previous copy stays."""
    import pytest

    bi = tmp_path / "bi"
    first = publish(_warehouse(3), bi, run_id="run-1")

    class StoppedAtDetach:
        def __init__(self, con):
            self.con, self.stopped = con, False

        def execute(self, sql, *args):
            if sql.startswith("DETACH") and not self.stopped:
                self.stopped = True
                self.con.execute(sql, *args)  # the checkpoint was written; the stop comes as it returns
                raise KeyboardInterrupt
            return self.con.execute(sql, *args)

    with pytest.raises(KeyboardInterrupt):
        publish(StoppedAtDetach(_warehouse(5)), bi, run_id="run-2")
    assert sorted(p.name for p in bi.iterdir()) == ["manifest.json", "parquet", "warehouse.duckdb"]
    with duckdb.connect(str(first.database), read_only=True) as con:
        assert con.execute("select count(*) from marts.dim_customers").fetchone() == (3,)
