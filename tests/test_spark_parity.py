"""The same dbt models on DuckDB and on Spark give the same tables (issue 7, scale-out).

A small fixture warehouse is built on DuckDB by the real pipeline (`privdom generate` + `privdom run`). The
tables the dbt project reads as sources (raw.* loaded by ingest, intermediate.int_identity__* and
int_customer_keys written by the Python identity assets) are copied into a local Spark (pyspark, in this
process, bound to 127.0.0.1 only); then `dbt build` runs on the `spark` target (dbt-spark, method session) in
this same process. Every table of every dbt layer (staging, intermediate, marts, segments; whatever models
exist, nothing is listed here) must hold the same rows on both engines: the same columns with the same kind
of type, money equal to the cent (exact DECIMAL values), timestamps the same instants (compared as
microseconds since the epoch), dates the same calendar dates.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
from collections import Counter
from datetime import date
from decimal import Decimal
from pathlib import Path

import duckdb
import pytest

from orchestration.settings import DBT_PROJECT_DIR, load_settings

pytestmark = pytest.mark.slow

PRIVDOM = Path(sys.executable).with_name("privdom")
LAYERS = ("staging", "intermediate", "marts", "segments")


# ---------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def duckdb_fixture(tmp_path_factory):
    """A data directory after `generate` + `privdom run`: the DuckDB side of the comparison."""
    from orchestration.generate import generate

    data_dir = tmp_path_factory.mktemp("parity")
    # 18 months: complete cohorts, trailing-12-month windows that bite, every lifecycle stage, RFM's segments
    generate(data_dir / "landing", customers=150, days=540, seed=20240601, dirty_rate=0.0)
    run = subprocess.run(
        [str(PRIVDOM), "--data-dir", str(data_dir), "run"], capture_output=True, text=True, timeout=900
    )
    assert run.returncode == 0, run.stdout + run.stderr
    return data_dir


@pytest.fixture(scope="module")
def spark(tmp_path_factory):
    """A local SparkSession on 127.0.0.1 with its warehouse in a temporary folder, as dbt-spark's session
    method finds it (SparkSession.builder.getOrCreate())."""
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        pytest.fail("the Spark parity test needs a Java runtime (17+): apt-get install openjdk-17-jre-headless")
    from pyspark.sql import SparkSession

    root = tmp_path_factory.mktemp("spark")
    (root / "tmp").mkdir()
    # The JVM reads SPARK_LOCAL_IP when it starts: without it Spark looks for a non-loopback address.
    mp = pytest.MonkeyPatch()
    mp.setenv("SPARK_LOCAL_IP", "127.0.0.1")
    session = (
        SparkSession.builder.master("local[2]")
        .appName("privdom-parity")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.session.timeZone", "Asia/Shanghai")
        .config("spark.sql.catalogImplementation", "in-memory")
        .config("spark.sql.warehouse.dir", str(root / "warehouse"))
        .config("spark.local.dir", str(root / "local"))
        .config("spark.driver.extraJavaOptions", f"-Djava.io.tmpdir={root / 'tmp'}")
        .config("spark.sql.shuffle.partitions", "2")
        .config("spark.default.parallelism", "2")
        .config("spark.sql.adaptive.enabled", "false")
        # below what the fixture's recursive CTE needs: the build passes only because the profile lifts them (as
        # Spark's defaults, 1,000,000 rows and 100 levels, would stop it above a million customers)
        .config("spark.sql.cteRecursionRowLimit", "100")
        .config("spark.sql.cteRecursionLevelLimit", "1")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()
    mp.undo()


def _source_tables() -> list[tuple[str, str]]:
    """Every (schema, table) a dbt model reads as a source (the manifest's dependencies: the schema segments is
    declared as sources for its docs, and no model reads it)."""
    manifest = json.loads((DBT_PROJECT_DIR / "target" / "manifest.json").read_text(encoding="utf-8"))
    read = {dep for node in manifest["nodes"].values() if node["resource_type"] == "model"
            for dep in node["depends_on"]["nodes"] if dep.startswith("source.")}
    tables = [(manifest["sources"][s]["schema"], manifest["sources"][s]["identifier"]) for s in read]
    assert ("raw", "orders") in tables and ("intermediate", "int_customer_keys") in tables
    return sorted(set(tables))


def _dbt(args: list[str], target_dir: Path, vars_json: str) -> object:
    from dbt.cli.main import dbtRunner

    result = dbtRunner().invoke(
        [
            *args,
            "--project-dir", str(DBT_PROJECT_DIR),
            "--profiles-dir", str(DBT_PROJECT_DIR),
            "--target-path", str(target_dir / "target"),
            "--log-path", str(target_dir / "logs"),
            "--vars", vars_json,
        ]
    )
    return result


@pytest.fixture(scope="module")
def spark_build(duckdb_fixture, spark, tmp_path_factory):
    """Copy the sources into Spark, then `dbt build` on the spark target in this process."""
    settings = load_settings(duckdb_fixture)
    con = duckdb.connect(str(settings.warehouse_path), read_only=True)
    try:
        for schema, table in _source_tables():
            arrow = con.sql(f'select * from "{schema}"."{table}"').to_arrow_table()
            spark.sql(f"create database if not exists {schema}")
            spark.createDataFrame(arrow).write.mode("overwrite").format("parquet").saveAsTable(f"{schema}.{table}")
    finally:
        con.close()

    work = tmp_path_factory.mktemp("dbt_spark")
    vars_json = json.dumps(settings.dbt_vars(), sort_keys=True, separators=(",", ":"))
    with pytest.MonkeyPatch.context() as mp:
        for name, value in settings.dbt_env().items():
            mp.setenv(name, value)
        mp.setenv("DBT_SEND_ANONYMOUS_USAGE_STATS", "false")
        mp.setenv("PRIVDOM_SPARK_THREADS", "2")
        result = _dbt(
            ["build", "--target", "spark", "--exclude", "resource_type:unit_test"], work, vars_json
        )
    failures = [
        f"{r.node.unique_id}: {r.status} {r.message}"
        for r in (result.result or [])
        if str(r.status) not in ("success", "pass", "warn", "no-op")  # exposures are no-op
    ]
    assert result.success and not failures, "dbt build on Spark failed:\n" + "\n".join(
        failures or [repr(result.exception)]
    )
    models = sorted(
        {(r.node.schema, r.node.alias) for r in result.result if r.node.resource_type == "model"}
    )
    return settings, models, work


# -------------------------------------------------------------------------------------- normalisation


def _published_type(type_name: str, engine: str) -> str:
    """A column type as BI tools see it, named the same for both engines: integer width and decimal precision
    count (a published column must not be BIGINT on one engine and INT on the other). Instants: DuckDB's
    TIMESTAMP WITH TIME ZONE, Spark's TIMESTAMP."""
    t = type_name.lower().replace(" ", "")
    if t == "timestamp" and engine == "spark":
        return "instant"
    return {"integer": "int", "int4": "int", "int8": "bigint", "long": "bigint", "varchar": "string", "text": "string",
            "timestampwithtimezone": "instant", "timestamptz": "instant", "timestamp_ltz": "instant",
            "float8": "double", "bool": "boolean"}.get(t, t)


def _kind(type_name: str, engine: str) -> str:
    """The family of a column type, named the same for both engines. Instants: DuckDB's TIMESTAMP WITH TIME
    ZONE, Spark's TIMESTAMP; wall-clock times: DuckDB's TIMESTAMP, Spark's TIMESTAMP_NTZ."""
    t = type_name.lower()
    if t.startswith(("decimal", "numeric")):
        return "decimal"
    if t in ("tinyint", "smallint", "integer", "int", "bigint", "hugeint", "utinyint", "usmallint", "uinteger", "ubigint", "uhugeint"):
        return "integer"
    if t in ("double", "float", "real"):
        return "float"
    if t in ("varchar", "string", "text") or t.startswith(("varchar", "char")):
        return "string"
    if t in ("timestamp with time zone", "timestamptz", "timestamp_ltz") or (t == "timestamp" and engine == "spark"):
        return "instant"
    if t in ("timestamp", "timestamp_ntz"):
        return "wall_clock"
    if t.endswith("[]") or t.startswith("array"):
        return "array"
    return t  # date, boolean, and anything else by its own name


def _normalise(value: object) -> object:
    if isinstance(value, float):
        return "NaN" if math.isnan(value) else float(f"{value:.12g}")
    if isinstance(value, (list, tuple)):
        return tuple(_normalise(v) for v in value)
    return value


# When a build ran, not what it computed (the build stamp, macros/data_tests/privdom_rows_to_test.sql): its type
# is compared, its values are not.
BOOKKEEPING_COLUMNS = {"_built_at"}


def _duckdb_rows(con, schema: str, table: str) -> tuple[list[tuple[str, str]], Counter]:
    columns = con.execute(
        "select column_name, data_type from information_schema.columns "
        "where table_schema = ? and table_name = ? order by ordinal_position",
        [schema, table],
    ).fetchall()
    kinds = [(name, _kind(data_type, "duckdb")) for name, data_type in columns]
    select = ", ".join(
        f'epoch_us("{name}")' if kind == "instant" else f'cast("{name}" as varchar)' if kind == "wall_clock" else f'"{name}"'
        for name, kind in kinds if name not in BOOKKEEPING_COLUMNS
    )
    rows = con.execute(f'select {select} from "{schema}"."{table}"').fetchall()
    return kinds, Counter(tuple(_normalise(v) for v in row) for row in rows)


def _spark_rows(spark, schema: str, table: str) -> tuple[list[tuple[str, str]], Counter]:
    fields = spark.table(f"{schema}.{table}").schema.fields
    kinds = [(f.name, _kind(f.dataType.simpleString(), "spark")) for f in fields]
    select = ", ".join(
        f"unix_micros(`{name}`)" if kind == "instant" else f"cast(`{name}` as string)" if kind == "wall_clock" else f"`{name}`"
        for name, kind in kinds if name not in BOOKKEEPING_COLUMNS
    )
    rows = spark.sql(f"select {select} from {schema}.{table}").collect()
    return kinds, Counter(tuple(_normalise(v) for v in row) for row in rows)


# ---------------------------------------------------------------------------------------------- tests


def test_every_layer_table_is_built_on_both_engines(duckdb_fixture, spark_build, spark):
    settings, models, _ = spark_build
    con = duckdb.connect(str(settings.warehouse_path), read_only=True)
    try:
        on_duckdb = set(
            con.execute(
                "select table_schema, table_name from information_schema.tables where table_schema in ('marts', 'segments')"
            ).fetchall()
        )
    finally:
        con.close()
    assert ("marts", "dim_customers") in on_duckdb
    # the published dbt models; segments.segment_* and sync_* are written by Python assets, not by dbt
    manifest = json.loads((DBT_PROJECT_DIR / "target" / "manifest.json").read_text(encoding="utf-8"))
    dbt_models = {
        (node["schema"], node["name"])
        for node in manifest["nodes"].values()
        if node["resource_type"] == "model" and node["schema"] in ("marts", "segments")
    }
    assert dbt_models <= on_duckdb
    built = {(schema, table) for schema, table in models if schema in ("marts", "segments")}
    assert built == dbt_models, f"only on DuckDB: {sorted(dbt_models - built)}; only on Spark: {sorted(built - dbt_models)}"
    on_spark = {(schema, t.name) for schema in LAYERS if spark.catalog.databaseExists(schema) for t in spark.catalog.listTables(schema)}
    assert set(models) <= on_spark


def test_every_model_holds_the_same_rows_on_duckdb_and_spark(spark_build, spark):
    settings, models, _ = spark_build
    assert len(models) >= 10
    con = duckdb.connect(str(settings.warehouse_path), read_only=True)
    problems = []
    try:
        for schema, table in models:
            duck_kinds, duck_rows = _duckdb_rows(con, schema, table)
            spark_kinds, spark_rows = _spark_rows(spark, schema, table)
            name = f"{schema}.{table}"
            if duck_kinds != spark_kinds:
                problems.append(f"{name}: columns differ\n  duckdb {duck_kinds}\n  spark  {spark_kinds}")
                continue
            if duck_rows != spark_rows:
                only_duck = list((duck_rows - spark_rows).elements())[:3]
                only_spark = list((spark_rows - duck_rows).elements())[:3]
                problems.append(
                    f"{name}: {sum(duck_rows.values())} rows on DuckDB, {sum(spark_rows.values())} on Spark; "
                    f"{[c for c, _ in duck_kinds if c not in BOOKKEEPING_COLUMNS]}\n  only on DuckDB {only_duck}\n  only on Spark  {only_spark}"
                )
    finally:
        con.close()
    assert not problems, "\n".join(problems)


def test_published_columns_have_the_same_types_on_both_engines(spark_build, spark):
    """BI tools read the marts: a column is the same type, to the integer width and decimal precision, on both
    engines (the row comparison above compares type families). From the Spark review: months_since and
    months_since_first_paid were BIGINT on DuckDB and INT on Spark."""
    settings, models, _ = spark_build
    con = duckdb.connect(str(settings.warehouse_path), read_only=True)
    problems = []
    try:
        for schema, table in models:
            if schema != "marts":
                continue
            on_duckdb = [(n, _published_type(t, "duckdb")) for n, t in con.execute(
                "select column_name, data_type from information_schema.columns where table_schema = ? and table_name = ? "
                "order by ordinal_position", [schema, table]).fetchall()]
            on_spark = [(f.name, _published_type(f.dataType.simpleString(), "spark"))
                        for f in spark.table(f"{schema}.{table}").schema.fields]
            if on_duckdb != on_spark:
                problems.append(f"{schema}.{table}: " + ", ".join(
                    f"{a[0]} {a[1]} / {b[1]}" for a, b in zip(on_duckdb, on_spark) if a != b))
    finally:
        con.close()
    assert not problems, "\n".join(problems)


def test_marts_hold_rows_money_and_instants(spark_build, spark):
    """The comparison above is not vacuous: the fixture's marts have rows, money and timestamps, and reach the
    paths a short history would not (complete cohorts, the trailing 12 months, every lifecycle stage)."""
    settings, models, _ = spark_build
    rows = spark.sql(
        "select count(*) as customers, sum(net_revenue) as revenue, count(acquired_at) as acquired "
        "from marts.dim_customers"
    ).collect()[0]
    assert rows.customers > 100
    assert rows.revenue > 0 and rows.revenue == rows.revenue.quantize(Decimal("0.01"))
    assert rows.acquired == rows.customers
    empty = [f"{schema}.{table}" for schema, table in models
             if schema == "marts" and spark.sql(f"select count(*) from {schema}.{table}").collect()[0][0] == 0]
    assert not empty, empty
    stages = {r[0] for r in spark.sql("select distinct lifecycle_stage from marts.dim_customers").collect()}
    assert stages == {"new", "active", "at_risk", "dormant", "churned"}
    assert spark.sql("select count(*) from marts.fct_aarrr_funnel where is_complete").collect()[0][0] > 0
    assert spark.sql("select max(months_since) from marts.fct_cohort_retention").collect()[0][0] >= 12
    assert spark.sql("select max(generation) from marts.fct_referrals").collect()[0][0] >= 2
    # the profile lifted Spark's recursion limits, which the session was started below what the build needs
    assert spark.conf.get("spark.sql.cteRecursionRowLimit") == "-1"
    assert spark.conf.get("spark.sql.cteRecursionLevelLimit") == "-1"


# One query through the portable macros, on both engines; the expected values are worked out by hand.
MACRO_CHECK_SQL = """
{{ privdom_require_recursive_cte() }}
with recursive numbers as (
    select 1 as n
    union all
    select n + 1 from numbers where n < 5
),
letters as (
    select 'b' as x union all select 'a' union all select cast(null as {{ dbt.type_string() }})
    union all select 'c' union all select 'a'
),
aggregates as (
    select
        {{ privdom_string_agg('x', ',', distinct=true) }} as distinct_letters,
        {{ privdom_string_agg('x', ';', order_by='x desc') }} as letters_desc,
        {{ privdom_sorted_set_agg('x') }} as letter_set
    from letters
),
instants as (
    select
        cast('2024-01-31 17:00:00+00:00' as {{ privdom_type_instant() }}) as feb_1_0100_shanghai,
        cast('2024-01-31 15:59:59+00:00' as {{ privdom_type_instant() }}) as jan_31_2359_shanghai,
        cast('2023-12-31 16:30:00+00:00' as {{ privdom_type_instant() }}) as jan_1_0030_shanghai,
        cast('2024-02-01 00:00:00+00:00' as {{ privdom_type_instant() }}) as feb_1_0000_utc
)
select
    {{ privdom_local_period_start('day', 'i.feb_1_0100_shanghai') }} as day_of_feb_1,
    {{ privdom_local_period_start('week', 'i.feb_1_0100_shanghai') }} as week_of_feb_1,
    {{ privdom_local_period_start('month', 'i.feb_1_0100_shanghai') }} as month_of_feb_1,
    {{ privdom_local_period_start('day', 'i.jan_31_2359_shanghai') }} as day_of_jan_31,
    {{ privdom_local_period_start('year', 'i.jan_1_0030_shanghai') }} as year_of_jan_1,
    {{ privdom_hours_between(privdom_local_date_start("cast('2024-02-01' as date)"), 'i.feb_1_0000_utc') }} as shanghai_midnight_hours_before_utc,
    {{ privdom_hours_between('i.feb_1_0100_shanghai', privdom_add_days('i.feb_1_0100_shanghai', 30)) }} as hours_in_30_days,
    {{ privdom_hours_between('i.feb_1_0100_shanghai', privdom_add_days('i.feb_1_0100_shanghai', -1)) }} as hours_back_1_day,
    {{ privdom_date_diff_days("cast('2024-02-01' as date)", "cast('2024-03-01' as date)") }} as days_feb_2024,
    {{ privdom_date_diff_days("cast('2024-03-01' as date)", "cast('2024-02-01' as date)") }} as days_back,
    {{ privdom_date_add_days("cast('2024-02-28' as date)", 2) }} as two_days_after_feb_28,
    {{ privdom_sha256("'86' || '13912345678'") }} as phone_hash,
    {{ privdom_regexp_full_match("'000'", '0+') }} as zeros_match,
    {{ privdom_regexp_full_match("'0001'", '0+') }} as zeros_one_match,
    {{ privdom_regexp_full_match("'b'", 'a|b') }} as alternative_matches,
    {{ privdom_regexp_full_match("'ab'", 'a|b') }} as both_alternatives_match,
    a.distinct_letters,
    a.letters_desc,
    {{ privdom_array_size('a.letter_set') }} as letter_set_size,
    {{ privdom_array_contains('a.letter_set', "'c'") }} as letter_set_has_c,
    {{ privdom_array_contains('a.letter_set', "'d'") }} as letter_set_has_d,
    (select sum(n) from numbers) as recursive_sum,
    {{ privdom_mask_phones("'13800138000,13900139000'") }} as two_phones_side_by_side,
    {{ privdom_mask_phones("'推荐人１３８００１３８０００送券'") }} as full_width_phone_in_chinese,
    {{ privdom_mask_phones("'call +86 138-0013-8000 now'") }} as prefixed_phone_with_dashes,
    {{ privdom_mask_phones("'order 213800138000 and 1380013800'") }} as digits_that_are_no_phone,
    {{ privdom_mask_phones("'tel13800138000x'") }} as phone_between_letters,
    {{ privdom_string_literal("it's \\\\N, a\\\\ ''中文''") }} as literal_text,
    {{ privdom_string_literal("ends with \\\\") }} as literal_ending_in_a_backslash
from instants as i
cross join aggregates as a
"""

MACRO_EXPECTED = {
    "day_of_feb_1": date(2024, 2, 1),
    "week_of_feb_1": date(2024, 1, 29),  # Thursday 1 Feb 2024: its ISO week starts Monday 29 Jan
    "month_of_feb_1": date(2024, 2, 1),
    "day_of_jan_31": date(2024, 1, 31),  # 23:59:59 in Shanghai is still 31 Jan
    "year_of_jan_1": date(2024, 1, 1),
    "shanghai_midnight_hours_before_utc": 8.0,
    "hours_in_30_days": 720.0,
    "hours_back_1_day": -24.0,
    "days_feb_2024": 29,
    "days_back": -29,
    "two_days_after_feb_28": date(2024, 3, 1),  # 2024 is a leap year
    "phone_hash": hashlib.sha256(b"8613912345678").hexdigest(),
    "zeros_match": True,
    "zeros_one_match": False,
    "alternative_matches": True,
    "both_alternatives_match": False,
    "distinct_letters": "a,b,c",
    "letters_desc": "c;b;a;a",
    "letter_set_size": 3,
    "letter_set_has_c": True,
    "letter_set_has_d": False,
    "recursive_sum": 15,
    # hand-worked: 3 digits, ****, the last 4, as typed; a +86 prefix and the separators go with the number
    "two_phones_side_by_side": "138****8000,139****9000",
    "full_width_phone_in_chinese": "推荐人１３８****８０００送券",
    "prefixed_phone_with_dashes": "call 138****8000 now",
    "digits_that_are_no_phone": "order 213800138000 and 1380013800",  # 12 digits; 10 digits
    "phone_between_letters": "tel138****8000x",
    # as written, backslashes and quotes included (Spark read a backslash as an escape)
    "literal_text": "it's \\N, a\\ ''中文''",
    "literal_ending_in_a_backslash": "ends with \\",
}


def _compile_for_duckdb(settings, tmp_path: Path, vars_json: str) -> str:
    """The macro query as compiled for DuckDB, by dbt in a subprocess (an in-process dbt-duckdb keeps DuckDB
    objects alive until the interpreter exits)."""
    env = {**os.environ, **settings.dbt_env(), "PRIVDOM_WAREHOUSE": str(tmp_path / "macros.duckdb")}
    env["DBT_SEND_ANONYMOUS_USAGE_STATS"] = "false"
    run = subprocess.run(
        [
            str(Path(sys.executable).with_name("dbt")), "compile", "--inline", MACRO_CHECK_SQL,
            "--output", "json", "--quiet", "--target", "duckdb",
            "--project-dir", str(DBT_PROJECT_DIR), "--profiles-dir", str(DBT_PROJECT_DIR),
            "--target-path", str(tmp_path / "target"), "--log-path", str(tmp_path / "logs"), "--vars", vars_json,
        ],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    return json.loads(run.stdout[run.stdout.index("{"):])["compiled"]


def test_portable_macros_give_the_same_answers_on_both_engines(spark_build, spark, tmp_path):
    """Whatever the session time zone: the calendar macros convert to Asia/Shanghai themselves."""
    settings, _, work = spark_build
    vars_json = json.dumps(settings.dbt_vars(), sort_keys=True, separators=(",", ":"))
    duckdb_sql = _compile_for_duckdb(settings, tmp_path, vars_json)
    with pytest.MonkeyPatch.context() as mp:
        for name, value in settings.dbt_env().items():
            mp.setenv(name, value)
        mp.setenv("DBT_SEND_ANONYMOUS_USAGE_STATS", "false")
        compiled = _dbt(["compile", "--target", "spark", "--inline", MACRO_CHECK_SQL], work, vars_json)
    assert compiled.success, repr(compiled.exception)
    spark_sql = compiled.result.results[0].node.compiled_code
    answers = {}
    try:
        for time_zone in ("Asia/Shanghai", "UTC", "America/New_York"):
            con = duckdb.connect()
            try:
                con.execute(f"SET TimeZone = '{time_zone}'")
                cursor = con.execute(duckdb_sql)
                names = [d[0] for d in cursor.description]
                answers[f"duckdb {time_zone}"] = dict(zip(names, cursor.fetchone()))
            finally:
                con.close()
            spark.conf.set("spark.sql.session.timeZone", time_zone)
            answers[f"spark {time_zone}"] = spark.sql(spark_sql).collect()[0].asDict()
    finally:
        spark.conf.set("spark.sql.session.timeZone", "Asia/Shanghai")
    for engine, got in answers.items():
        mismatches = {k: (got.get(k), v) for k, v in MACRO_EXPECTED.items() if got.get(k) != v}
        assert not mismatches, f"{engine}: (got, expected) {mismatches}"
