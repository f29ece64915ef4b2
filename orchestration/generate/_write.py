"""Render one batch of logical rows as text / Arrow, and write it in one of the landing formats."""

from __future__ import annotations

import gzip
import io
import pathlib

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from orchestration.contract import CONTRACTS

from ._dirty import BAD_ENUM_TEXT, BAD_TYPE_TEXT
from ._model import CAMPAIGNS, CLERK_PHONE, N_STAFF, PH0, PLACEHOLDERS, TEST_MEMBER_ID, World, phone_numbers
from ._text import ABSENT, SH_OFFSET, dec_str, hex_str, int_str, mix64, money_str, phone_str, ts_str

# name, extension, encoding flavour
FORMATS: tuple[tuple[str, str], ...] = (
    ("csv_utf8", ".csv"),
    ("csv_utf8_bom", ".csv"),
    ("csv_gbk", ".csv"),
    ("csv_gzip", ".csv.gz"),
    ("parquet", ".parquet"),
    ("jsonl", ".jsonl"),
)
TEXT_FORMATS = frozenset(i for i, (name, _) in enumerate(FORMATS) if name != "parquet")
_SEQ_PREFIX = {("channel_events", "event_id"): ("ev", "event"), ("orders", "order_id"): ("SO", "order"),
               ("referrals", "referral_id"): ("RF", "referral"), ("referrals", "order_id"): ("SO", "order")}
_CAMPAIGN_TABLE = np.array(list(CAMPAIGNS) + [""])
_STAFF_TABLE = np.array([""] + [f"staff_{i:02d}" for i in range(1, N_STAFF + 1)])
_PLACEHOLDER_TABLE = np.array(list(PLACEHOLDERS))
# which customer an identifier column names, and which identifier it is
_ID_COLUMNS = {
    "openid": ("_cust", "openid"), "unionid": ("_cust", "unionid"),
    "wecom_external_userid": ("_cust", "wecom"), "phone": ("_cust", "phone"), "member_id": ("_cust", "member"),
    "referrer_member_id": ("_rr", "member"), "referrer_unionid": ("_rr", "unionid"), "referrer_phone": ("_rr", "phone"),
    "referee_openid": ("_re", "openid"), "referee_unionid": ("_re", "unionid"), "referee_phone": ("_re", "phone"),
    "referee_member_id": ("_re", "member"),
}


def _id_text(world: World, kind: str, code: np.ndarray, cust: np.ndarray, phs: np.ndarray) -> np.ndarray:
    n = len(code)
    out = np.full(n, "", dtype=object)
    real = (code >= 1) & (code <= 2)
    c = np.maximum(cust, 0)
    keys = world.keys
    if kind == "openid":
        one = code == 1
        if one.any():
            out[one] = hex_str(mix64(c[one], *keys["oa"]), 16, "oA")
        two = code == 2
        if two.any():
            out[two] = hex_str(mix64(c[two], *keys["mp"]), 16, "oM")
    elif kind == "unionid":
        if real.any():
            out[real] = hex_str(mix64(c[real], *keys["union"]), 16, "oU")
    elif kind == "wecom":
        if real.any():
            out[real] = hex_str(mix64(c[real], *keys["wecom"]), 16, "wm")
    elif kind == "phone":
        if real.any():
            out[real] = phone_str(phone_numbers(world, c[real]), phs[real])
        sh = code == 3
        if sh.any():
            out[sh] = phone_str(np.full(sh.sum(), CLERK_PHONE, np.int64), phs[sh])
    elif kind == "member":
        width = max(7, len(str(world.n)))
        if real.any():
            out[real] = dec_str(keys["member_perm"][c[real]] + 1, width, "M")
        out[code == 3] = TEST_MEMBER_ID
    ph = code >= PH0
    if ph.any():
        out[ph] = _PLACEHOLDER_TABLE[code[ph] - PH0]
    return out


def render_text(source: str, world: World, b: dict) -> dict[str, np.ndarray]:
    """Every contract column as text (object arrays of str; '' = absent), dirty `type` overrides applied."""
    con = CONTRACTS[source]
    out: dict[str, np.ndarray] = {}
    n = len(b["_batch"])
    for col in con.columns:
        v = b[col.name]
        if col.is_identifier:
            ck, kind = _ID_COLUMNS[col.name]
            s = _id_text(world, kind, v, b[ck], b["_phs"])
        elif col.type == "timestamp":
            s = ts_str(v, b["_tss"])
        elif col.type == "decimal":
            s = money_str(v)
        elif col.type == "integer":
            s = int_str(v)
        elif col.type == "enum":
            table = np.array(list(col.values) + [BAD_ENUM_TEXT.get(col.name, "invalid"), ""])
            s = table[np.where(v == -1, len(col.values) + 1, np.where(v == -2, len(col.values), v))]
        elif (source, col.name) in _SEQ_PREFIX:
            prefix, key = _SEQ_PREFIX[(source, col.name)]
            s = np.full(n, "", dtype=object)
            ok = v >= 0
            if ok.any():
                s[ok] = hex_str(mix64(v[ok], *world.keys[key], bits=48), 12, prefix)
        elif col.name == "campaign":
            s = _CAMPAIGN_TABLE[np.where(v < 0, len(CAMPAIGNS), v)]
        elif col.name == "wecom_staff_userid":
            s = _STAFF_TABLE[np.maximum(v, 0)]
        elif col.name == "referral_code":
            s = np.full(n, "", dtype=object)
            ok = v >= 0
            if ok.any():
                code = hex_str(mix64(v[ok], *world.keys["code"], bits=32), 8)
                s[ok] = np.strings.add(np.where(b["_rcm"][ok] == 2, "DS", "IC"), code)
        else:
            raise NotImplementedError(f"generator cannot render {source}.{col.name}")
        out[col.name] = np.asarray(s, dtype=object)
    dirty = b["_dirty"]
    if (dirty >= 0).any():
        for ri, rule in enumerate(con.rules):
            if rule.kind == "type":
                sel = dirty == ri
                if sel.any():
                    out[rule.columns[0]][sel] = BAD_TYPE_TEXT[con.column(rule.columns[0]).type]
    return out


def csv_bytes(cols: list[str], text: dict[str, np.ndarray]) -> str:
    line = text[cols[0]].astype(str)
    for c in cols[1:]:
        line = np.strings.add(np.strings.add(line, ","), text[c].astype(str))
    return ",".join(cols) + "\n" + ("\n".join(line.tolist()) + "\n" if len(line) else "")


def jsonl_text(source: str, text: dict[str, np.ndarray]) -> str:
    con = CONTRACTS[source]
    line = None
    for i, col in enumerate(con.columns):
        v = text[col.name].astype(str)
        if col.type == "integer":  # a JSON number (a dirty "3.5" stays a number)
            frag = np.where(v == "", "null", v)
        else:
            frag = np.where(v == "", "null", np.strings.add(np.strings.add('"', v), '"'))
        key = ("{" if i == 0 else ",") + f'"{col.name}":'
        frag = np.strings.add(key, frag)
        line = frag if line is None else np.strings.add(line, frag)
    line = np.strings.add(line, "}")
    return "\n".join(line.tolist()) + "\n" if len(line) else ""


def arrow_table(source: str, b: dict, text: dict[str, np.ndarray], tz_aware: bool) -> pa.Table:
    con = CONTRACTS[source]
    arrays, names = [], []
    for col in con.columns:
        v = b[col.name]
        if col.type == "timestamp":
            ok = v != ABSENT
            if tz_aware:
                arr = pa.array(np.where(ok, v, 0) * 1_000_000, type=pa.int64(), mask=~ok).cast(pa.timestamp("us", tz="UTC"))
            else:  # naive = Asia/Shanghai wall time
                arr = pa.array(np.where(ok, v + SH_OFFSET, 0) * 1_000_000, type=pa.int64(), mask=~ok).cast(pa.timestamp("us"))
        elif col.type == "decimal":
            s = text[col.name].astype(str)
            arr = pa.array(s, type=pa.string(), mask=(s == "")).cast(pa.decimal128(18, 2))
        elif col.type == "integer":
            ok = v != ABSENT
            arr = pa.array(np.where(ok, v, 0), type=pa.int64(), mask=~ok)
        else:
            s = text[col.name].astype(str)
            arr = pa.array(s, type=pa.string(), mask=(s == ""))
        arrays.append(arr)
        names.append(col.name)
    return pa.Table.from_arrays(arrays, names=names)


def write_batch(path: pathlib.Path, fmt: int, source: str, world: World, b: dict, tz_aware: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = render_text(source, world, b)
    name = FORMATS[fmt][0]
    if name == "parquet":
        pq.write_table(arrow_table(source, b, text, tz_aware), path, compression="snappy",
                       use_dictionary=True, write_statistics=True)
        return
    if name == "jsonl":
        path.write_bytes(jsonl_text(source, text).encode("utf-8"))
        return
    data = csv_bytes(list(CONTRACTS[source].column_names), text)
    if name == "csv_utf8":
        raw = data.encode("utf-8")
    elif name == "csv_utf8_bom":
        raw = b"\xef\xbb\xbf" + data.encode("utf-8")
    elif name == "csv_gbk":
        raw = data.encode("gbk")
    elif name == "csv_gzip":
        buf = io.BytesIO()
        with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=6) as gz:
            gz.write(data.encode("utf-8"))
        raw = buf.getvalue()
    else:  # pragma: no cover
        raise ValueError(name)
    path.write_bytes(raw)
