"""The synthetic landing-data generator: determinism, formats, and rows checked against the contract.

The checks here re-read the files with pandas/pyarrow and judge each row by the contract independently of
the generator and of ingestion.
"""

from __future__ import annotations

import datetime as dt
import gzip
import hashlib
import json
import pathlib
import re

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from orchestration.contract import (
    ALL_ZEROS_PATTERN,
    BUILTIN_PLACEHOLDERS,
    CONTRACTS,
    MAINLAND_MOBILE_PATTERN,
    PAID_LIKE_STATUSES,
    SOURCES,
)
from orchestration.generate import GenerateSummary, generate

SMALL = dict(customers=300, days=60, seed=7)
_DATE_IN_NAME = re.compile(r"(?<!\d)(\d{4})(\d{2})(\d{2})(?!\d)")
_DT_FOLDER = re.compile(r"^dt=(\d{4}-\d{2}-\d{2})$")


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> tuple[pathlib.Path, GenerateSummary]:
    d = tmp_path_factory.mktemp("clean")
    return d, generate(d, dirty_rate=0.0, **SMALL)


@pytest.fixture(scope="module")
def dirty(tmp_path_factory) -> tuple[pathlib.Path, GenerateSummary]:
    d = tmp_path_factory.mktemp("dirty")
    return d, generate(d, dirty_rate=0.02, **SMALL)


# ------------------------------------------------------------------------------------------------- reading
def batch_date(rel: pathlib.Path) -> dt.date:
    for part in rel.parts[:-1]:
        m = _DT_FOLDER.match(part)
        if m:
            return dt.date.fromisoformat(m.group(1))
    m = _DATE_IN_NAME.search(rel.name)
    assert m, f"no batch date in {rel}"
    return dt.date(int(m.group(1)), int(m.group(2)), int(m.group(3)))


def _files(root: pathlib.Path, source: str) -> list[pathlib.Path]:
    return sorted(p for p in (root / source).rglob("*") if p.is_file())


def _decode_csv(raw: bytes) -> str:
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    if raw.startswith(b"\xef\xbb\xbf"):
        return raw[3:].decode("utf-8")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("gbk")


def read_file(path: pathlib.Path) -> pd.DataFrame:
    """A landing file as strings ('' = absent); Parquet typed values rendered as ISO text / decimal text."""
    name = path.name
    if name.endswith(".parquet"):
        t = pq.read_table(path)
        out = {}
        for f in t.schema:
            col = t.column(f.name).to_pylist()
            if str(f.type).startswith("timestamp"):
                out[f.name] = ["" if v is None else v.isoformat() for v in col]
            else:
                out[f.name] = ["" if v is None else str(v) for v in col]
        return pd.DataFrame(out, dtype=object)
    if name.endswith(".jsonl"):
        rows = [json.loads(line) for line in path.read_text("utf-8").splitlines() if line]
        df = pd.DataFrame(rows, dtype=object)
        return df.map(lambda v: "" if v is None else str(v))
    text = _decode_csv(path.read_bytes())
    lines = text.splitlines()
    header = lines[0].split(",")
    return pd.DataFrame([ln.split(",") for ln in lines[1:]], columns=header, dtype=object)


def load(root: pathlib.Path, summary: GenerateSummary, source: str) -> pd.DataFrame:
    frames = []
    skip = set(summary.bad_files)
    for p in _files(root, source):
        rel = p.relative_to(root)
        if str(rel) in skip:
            continue
        df = read_file(p)
        df["_file"] = str(rel)
        df["_batch"] = pd.Timestamp(batch_date(rel), tz="Asia/Shanghai")
        frames.append(df)
    return pd.concat(frames, ignore_index=True)


def parse_ts(s: pd.Series) -> pd.Series:
    """ISO-8601 text → UTC instants; no offset = Asia/Shanghai; NaT when not a timestamp."""
    s = s.astype(str).str.replace(" ", "T", n=1)
    ok = s.str.match(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})?$")
    has_off = s.str.contains(r"(?:Z|[+-]\d{2}:\d{2})$")
    out = pd.Series(pd.NaT, index=s.index, dtype="datetime64[ns, UTC]")
    a = ok & has_off
    b = ok & ~has_off
    if a.any():
        out[a] = pd.to_datetime(s[a], utc=True, errors="coerce", format="ISO8601")
    if b.any():
        out[b] = pd.to_datetime(s[b], errors="coerce", format="ISO8601").dt.tz_localize("Asia/Shanghai").dt.tz_convert("UTC")
    return out


def is_placeholder(s: pd.Series) -> pd.Series:
    t = s.astype(str).str.strip().str.lower()
    return t.isin(BUILTIN_PLACEHOLDERS) | t.str.match(ALL_ZEROS_PATTERN)


def normalise_phone(s: pd.Series) -> pd.Series:
    d = s.astype(str).str.replace(r"[^0-9]", "", regex=True)
    return d.where(~((d.str.len() == 13) & d.str.startswith("86")), d.str[2:])


def violations(source: str, df: pd.DataFrame) -> pd.Series:
    """Per row: the names of the contract rules it breaks (judged here, independently)."""
    c = CONTRACTS[source]
    broken = pd.Series([[] for _ in range(len(df))], index=df.index, dtype=object)

    def mark(name: str, mask: pd.Series) -> None:
        for i in mask[mask.fillna(False)].index:
            broken[i].append(name)

    present = {col: df[col].astype(str).str.strip() != "" for col in c.column_names}
    ts = {col: parse_ts(df[col]) for col in c.timestamp_columns}
    money = {}
    for col in c.columns:
        if col.type == "decimal":
            txt = df[col.name].astype(str)
            okm = txt.str.match(r"^-?\d+(\.\d{1,2})?$")
            money[col.name] = pd.to_numeric(txt.where(okm), errors="coerce").fillna(0 if col.default else np.nan)
            money[col.name] = money[col.name].where(okm | ~present[col.name])
    for rule in c.rules:
        k, cols = rule.kind, rule.columns
        if k == "well_formed":
            continue  # the frame holds well-formed records only (read_file)
        if k == "required":
            mark(rule.name, ~present[cols[0]])
        elif k == "type":
            typ = c.column(cols[0]).type
            v = df[cols[0]].astype(str)
            if typ == "timestamp":
                bad = present[cols[0]] & ts[cols[0]].isna()
            elif typ == "decimal":
                bad = present[cols[0]] & ~v.str.match(r"^-?\d+(\.\d{1,2})?$")
            elif typ == "integer":
                bad = present[cols[0]] & ~v.str.match(r"^-?\d+$")
            else:  # phone
                bad = present[cols[0]] & ~is_placeholder(v) & ~normalise_phone(v).str.match(MAINLAND_MOBILE_PATTERN)
            mark(rule.name, bad)
        elif k == "in_set":
            mark(rule.name, present[cols[0]] & ~df[cols[0]].astype(str).str.strip().str.lower().isin(rule.values or c.column(cols[0]).values))
        elif k == "non_negative":
            v = money[cols[0]] if cols[0] in money else pd.to_numeric(df[cols[0]], errors="coerce")
            mark(rule.name, v < 0)
        elif k == "not_after":
            a, b = cols
            if a in ts:
                mark(rule.name, ts[a] > ts[b])
            else:
                mark(rule.name, money[a] > money[b])
        elif k == "required_when":
            mark(rule.name, ~present[cols[0]] & df[cols[1]].isin(rule.values))
        elif k == "refund_matches_status":
            net = money["gross_amount"] - money["discount_amount"]
            r = money["refund_amount"]
            st = df["status"]
            bad = ((st == "refunded") & ((r - net).abs() > 0.001)) | (
                (st == "partially_refunded") & ~((r > 0) & (r < net))) | (
                ~st.isin(["refunded", "partially_refunded"]) & (r != 0))
            mark(rule.name, bad & r.notna() & net.notna())
        elif k == "any_identifier":
            anyid = pd.Series(False, index=df.index)
            for col in cols:
                anyid |= present[col] & ~is_placeholder(df[col])
            applies = pd.Series(True, index=df.index)
            if rule.unless:
                applies = ~df[rule.unless[0]].isin(rule.unless[1])
            mark(rule.name, applies & ~anyid)
        elif k == "before_batch_limit":
            limit = (df["_batch"] + pd.Timedelta(days=2)).dt.tz_convert("UTC")
            bad = pd.Series(False, index=df.index)
            for col in cols:
                bad |= ts[col] >= limit
            mark(rule.name, bad)
        else:
            raise AssertionError(f"test does not know rule kind {k}")
    return broken


# ------------------------------------------------------------------------------------------------- tests
def _digest(root: pathlib.Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()}


def test_deterministic(tmp_path, dirty):
    root, summary = dirty
    a = tmp_path / "a"
    s2 = generate(a, dirty_rate=0.02, **SMALL)
    assert _digest(a) == _digest(root)
    assert s2.rows_by_source == summary.rows_by_source
    generate(a, dirty_rate=0.02, **SMALL)  # again into the same directory
    assert _digest(a) == _digest(root)
    b = tmp_path / "b"
    generate(b, dirty_rate=0.02, **{**SMALL, "seed": 8})
    assert _digest(b) != _digest(root)


def test_every_format_for_every_source(clean):
    root, summary = clean
    for source in SOURCES:
        files = _files(root, source)
        kinds = set()
        plain_ascii = 0
        for p in files:
            raw = p.read_bytes()
            if p.name.endswith(".csv.gz"):
                assert raw[:2] == b"\x1f\x8b"
                gzip.decompress(raw).decode("utf-8")
                kinds.add("gzip")
            elif p.name.endswith(".parquet"):
                assert raw[:4] == b"PAR1"
                assert pq.read_table(p).column_names == list(CONTRACTS[source].column_names)
                kinds.add("parquet")
            elif p.name.endswith(".jsonl"):
                first = json.loads(raw.decode("utf-8").splitlines()[0])
                assert list(first) == list(CONTRACTS[source].column_names)
                kinds.add("jsonl")
            elif p.name.endswith(".csv"):
                if raw.startswith(b"\xef\xbb\xbf"):
                    kinds.add("bom")
                else:
                    try:
                        raw.decode("utf-8")
                        kinds.add("utf8")
                        plain_ascii += raw.isascii()
                    except UnicodeDecodeError:
                        assert re.search(r"[\u4e00-\u9fff]", raw.decode("gbk"))
                        kinds.add("gbk")
            if "dt=" in str(p):
                kinds.add("folder")
            else:
                kinds.add("name")
        if source != "channel_events" and plain_ascii >= 2:
            kinds.add("gbk")  # orders and referrals hold no Chinese text: their GBK files are plain ASCII
        assert kinds >= {"gzip", "parquet", "jsonl", "bom", "utf8", "gbk", "folder", "name"}, (source, kinds)
    # Chinese campaign names survive GBK
    gbk = [p for p in _files(root, "channel_events") if p.suffix == ".csv" and not p.read_bytes().startswith(b"\xef\xbb\xbf")]
    assert any("社群拉新" in p.read_bytes().decode("gbk", errors="ignore") or "双11预热" in p.read_bytes().decode("gbk", errors="ignore") for p in gbk)


def test_parquet_timestamp_flavours(clean):
    root, _ = clean
    types = {str(pq.read_schema(p).field("occurred_at").type) for p in _files(root, "channel_events") if p.suffix == ".parquet"}
    assert types == {"timestamp[us, tz=UTC]", "timestamp[us]"}
    t = pq.read_schema(next(p for p in _files(root, "orders") if p.suffix == ".parquet"))
    assert str(t.field("gross_amount").type) == "decimal128(18, 2)"
    assert str(t.field("points_redeemed").type) == "int64"


def test_batch_dates_parse(clean):
    root, summary = clean
    for p in root.rglob("*"):
        if p.is_file():
            d = batch_date(p.relative_to(root))
            assert summary.start_date <= d <= summary.end_date


def test_clean_rows_satisfy_contract(clean):
    root, summary = clean
    assert summary.dirty_rows_by_rule == {} and summary.bad_files == []
    data = {}
    for source in SOURCES:
        df = load(root, summary, source)
        data[source] = df
        assert list(df.columns[:-2]) == list(CONTRACTS[source].column_names)
        assert len(df) == summary.rows_by_source[source]
        v = violations(source, df)
        bad = v[v.map(len) > 0]
        assert bad.empty, (source, df.loc[bad.index[:5]].to_dict("records"), bad.head().tolist())
    orders, refs = data["orders"], data["referrals"]
    paid = orders[orders.status.isin(PAID_LIKE_STATUSES)]
    assert (paid.paid_at != "").all()
    conv = refs[refs.status == "converted"]
    assert len(conv) > 0
    assert set(conv.order_id) <= set(orders.order_id)
    # orders flow through versions in later batches
    per = orders.groupby("order_id")["_batch"].agg(["nunique", "size"])
    assert (per["nunique"] > 1).any()
    assert set(orders.status) >= {"created", "paid", "shipped", "completed", "cancelled", "refunded", "partially_refunded"}
    assert set(refs.status) == {"invited", "clicked", "registered", "converted"}
    ev = data["channel_events"]
    assert set(ev.event_type) == set(CONTRACTS["channel_events"].column("event_type").values)
    # late rows exist: delivered in a batch after the day of their event
    occurred = parse_ts(ev.occurred_at).dt.tz_convert("Asia/Shanghai").dt.normalize()
    assert (ev._batch > occurred).sum() > 0
    assert summary.late_rows_by_source["channel_events"] > 0
    # duplicates: identical re-deliveries and conflicts on event_id
    dup = ev[ev.event_id.duplicated(keep=False)]
    content = [c for c in CONTRACTS["channel_events"].column_names]
    assert len(dup) > 0
    assert summary.conflict_rows > 0 and summary.duplicate_files
    groups = dup.groupby("event_id")["campaign"].nunique()
    assert (groups > 1).any()
    # a shared clerk phone on many customers' rows; placeholders in identifier columns
    phones = normalise_phone(pd.concat([ev.phone, orders.phone]))
    assert (phones == "19912345678").sum() > 25
    assert is_placeholder(pd.concat([ev.member_id, ev.phone, ev.unionid])).sum() - (pd.concat([ev.member_id, ev.phone, ev.unionid]) == "").sum() > 0
    assert len(content) == 11


def test_dirty_rows_cover_every_rule_and_are_exactly_the_bad_ones(dirty):
    root, summary = dirty
    for source in SOURCES:
        for rule in CONTRACTS[source].rules:
            if rule.kind != "well_formed":  # the generator writes well-formed files
                assert summary.dirty_rows_by_rule.get(f"{source}:{rule.name}", 0) >= 1, (source, rule.name)
        df = load(root, summary, source)
        assert len(df) == summary.rows_by_source[source]
        v = violations(source, df)
        # every injected row breaks a rule, and no other row does (the re-delivered file repeats its rows)
        dup_rows = sum(len(read_file(root / f)) for f in summary.duplicate_files if f.startswith(source))
        expected = sum(n for k, n in summary.dirty_rows_by_rule.items() if k.startswith(source + ":"))
        n_bad = int((v.map(len) > 0).sum())
        in_dup = int((v[df._file.isin(summary.duplicate_files)].map(len) > 0).sum())
        assert n_bad - in_dup == expected, (source, n_bad, in_dup, expected, dup_rows)
        # first broken rule (contract order) is the intended one for all but the gross<0 rows
        firsts = v[v.map(len) > 0].map(lambda x: x[0]).value_counts().to_dict()
        intended = {k.split(":", 1)[1]: n for k, n in summary.dirty_rows_by_rule.items() if k.startswith(source + ":")}
        for name, n in intended.items():
            assert firsts.get(name, 0) >= n, (source, name, firsts.get(name), n)


def test_bad_files(dirty):
    root, summary = dirty
    assert len(summary.bad_files) == 2
    xlsx = [f for f in summary.bad_files if f.endswith(".xlsx")]
    assert xlsx and (root / xlsx[0]).exists()
    csv = [f for f in summary.bad_files if f.endswith(".csv")][0]
    header = (root / csv).read_text("utf-8").splitlines()[0].split(",")
    assert "event_type" not in header and set(header) < set(CONTRACTS["channel_events"].column_names)
    assert summary.describe().count("\n") > 3


def test_dirty_rate_zero_has_no_dirt(clean):
    _, summary = clean
    assert summary.dirty_rows == 0 and not summary.bad_files


def test_same_file_delivered_twice(clean):
    root, summary = clean
    (dup,) = summary.duplicate_files
    orig = dup.replace("_resend", "")
    assert (root / dup).read_bytes() == (root / orig).read_bytes()


def test_dirty_share_is_dirty_rows_over_rows_per_source():
    s = GenerateSummary(pathlib.Path("x"), 10, 1, 1, 0.01, dt.date(2024, 1, 1), dt.date(2024, 1, 1),
                        rows_by_source={"orders": 400, "referrals": 200, "channel_events": 0},
                        dirty_rows_by_rule={"referrals:status.in_set": 3, "referrals:referral_id.required": 1,
                                            "orders:status.in_set": 2})
    assert s.dirty_share("referrals") == 4 / 200 and s.dirty_share("orders") == 2 / 400
    assert s.dirty_share("channel_events") == 0.0 and s.dirty_share("elsewhere") == 0.0
    assert "orders 0.5%, referrals 2.0%, channel_events 0.0%" in s.describe()


def test_generate_warns_when_small_data_would_fail_the_quarantine_limit(tmp_path, capsys):
    """Every contract rule gets at least one dirty row: 300 customers over 60 days have 354 referrals, of which
    18 (one per rule) are dirty, 5.1 % against the 5 % limit, so the run after would hold back the exports."""
    from orchestration import cli

    assert cli.main(["--data-dir", str(tmp_path / "small"), "generate", "--customers", "300", "--days", "60"]) == 0
    err = capsys.readouterr().err
    assert "warning: 5.1% of the 354 referrals rows are dirty" in err and "max_quarantine_share 5.0%" in err
    assert "channel_events" not in err and "orders" not in err
    assert cli.main(["--data-dir", str(tmp_path / "clean"), "generate", "--customers", "300", "--days", "60",
                     "--dirty-rate", "0"]) == 0
    assert "warning" not in capsys.readouterr().err


@pytest.mark.parametrize("args, words", [
    (["--customers", "0"], "--customers: must be 1 or more, got 0"),
    (["--days", "-3"], "--days: must be 1 or more, got -3"),
    (["--dirty-rate", "2"], "--dirty-rate: must be from 0 to below 0.5, got 2"),
    (["--dirty-rate", "0.5"], "--dirty-rate: must be from 0 to below 0.5, got 0.5"),
    (["--dirty-rate", "-0.01"], "--dirty-rate: must be from 0 to below 0.5, got -0.01"),
    (["--customers", "many"], "--customers: not a whole number: 'many'"),
])
def test_generate_refuses_values_it_cannot_use_with_a_usage_error(tmp_path, capsys, args, words):
    from orchestration import cli

    with pytest.raises(SystemExit) as info:
        cli.main(["--data-dir", str(tmp_path / "data"), "generate", *args])
    assert info.value.code == 2
    assert words in capsys.readouterr().err
    assert not (tmp_path / "data").exists()
