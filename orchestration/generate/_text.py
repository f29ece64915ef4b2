"""Vectorised text rendering helpers (numpy byte matrices → unicode arrays), no per-row Python."""

from __future__ import annotations

import numpy as np

SH_OFFSET = 8 * 3600  # Asia/Shanghai has no DST: a fixed +08:00
ABSENT = np.iinfo(np.int64).min  # sentinel for absent timestamps / amounts / integers

_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
_DEC = np.frombuffer(b"0123456789", dtype=np.uint8)
_TWO_DIGITS = np.array([f"{i:02d}" for i in range(100)])


def bytes_to_str(mat: np.ndarray) -> np.ndarray:
    """(n, w) uint8 ASCII matrix → numpy unicode array of width w."""
    n, w = mat.shape
    if n == 0:
        return np.array([], dtype=f"U{max(w, 1)}")
    return np.ascontiguousarray(mat, dtype=np.uint8).view(f"S{w}").ravel().astype(f"U{w}")


def hex_mat(vals: np.ndarray, width: int) -> np.ndarray:
    v = np.asarray(vals).astype(np.uint64)
    shifts = (np.uint64(4) * np.arange(width - 1, -1, -1, dtype=np.uint64))
    return _HEX[((v[:, None] >> shifts) & np.uint64(0xF)).astype(np.intp)]


def dec_mat(vals: np.ndarray, width: int) -> np.ndarray:
    v = np.asarray(vals).astype(np.int64)
    pw = (10 ** np.arange(width - 1, -1, -1, dtype=np.int64))
    return _DEC[((v[:, None] // pw) % 10).astype(np.intp)]


def hex_str(vals: np.ndarray, width: int, prefix: str = "") -> np.ndarray:
    s = bytes_to_str(hex_mat(vals, width))
    return np.strings.add(prefix, s) if prefix else s


def dec_str(vals: np.ndarray, width: int, prefix: str = "") -> np.ndarray:
    s = bytes_to_str(dec_mat(vals, width))
    return np.strings.add(prefix, s) if prefix else s


def mix64(i: np.ndarray, a: int, b: int, bits: int = 64) -> np.ndarray:
    """A bijection of [0, 2**bits) (odd multiplier, then xor-shift): unique ids that look random."""
    mask = np.uint64((1 << bits) - 1) if bits < 64 else np.uint64(0xFFFFFFFFFFFFFFFF)
    x = np.asarray(i).astype(np.uint64)
    with np.errstate(over="ignore"):
        x = (x * np.uint64(a | 1) + np.uint64(b)) & mask
        x = x ^ (x >> np.uint64(bits // 2))
        x = (x * np.uint64(0x9E3779B97F4A7C15 | 1)) & mask
    return x


# ------------------------------------------------------------------------------------------------- phones
PHONE_STYLES = 5  # 0 13800138000, 1 +86 138-0013-8000, 2 8613800138000, 3 138 0013 8000, 4 +8613800138000


def _lit(n: int, s: str) -> np.ndarray:
    return np.broadcast_to(np.frombuffer(s.encode(), dtype=np.uint8), (n, len(s)))


def phone_str(nums: np.ndarray, styles: np.ndarray) -> np.ndarray:
    n = len(nums)
    if n == 0:
        return np.array([], dtype="U17")
    d = dec_mat(nums, 11)
    a, b, c = d[:, :3], d[:, 3:7], d[:, 7:]
    variants = [
        d,
        np.hstack([_lit(n, "+86 "), a, _lit(n, "-"), b, _lit(n, "-"), c]),
        np.hstack([_lit(n, "86"), d]),
        np.hstack([a, _lit(n, " "), b, _lit(n, " "), c]),
        np.hstack([_lit(n, "+86"), d]),
    ]
    out = np.empty(n, dtype="U17")
    for k, m in enumerate(variants):
        sel = styles == k
        if sel.any():
            out[sel] = bytes_to_str(m[sel])
    return out


# ------------------------------------------------------------------------------------------------- times
TS_STYLES = 5  # 0 T+08:00, 1 Z (UTC), 2 T no offset (Shanghai), 3 space +08:00, 4 space no offset


def ts_str(ts: np.ndarray, styles: np.ndarray) -> np.ndarray:
    """Epoch seconds → ISO-8601 text in the row's style; '' where absent."""
    n = len(ts)
    out = np.full(n, "", dtype="U25")
    ok = ts != ABSENT
    if not ok.any():
        return out
    t = ts[ok]
    st = styles[ok]
    local = np.datetime_as_string((t + SH_OFFSET).astype("datetime64[s]"))
    utc = np.datetime_as_string(t.astype("datetime64[s]"))
    res = np.where(st == 1, np.strings.add(utc, "Z"), local)
    space = (st == 3) | (st == 4)
    res = np.where(space, np.strings.replace(res, "T", " "), res)
    res = np.where((st == 0) | (st == 3), np.strings.add(res, "+08:00"), res)
    out[ok] = res
    return out


# ------------------------------------------------------------------------------------------------- money
def money_str(cents: np.ndarray) -> np.ndarray:
    n = len(cents)
    out = np.full(n, "", dtype="U24")
    ok = cents != ABSENT
    if not ok.any():
        return out
    c = cents[ok]
    a = np.abs(c)
    s = np.strings.add(np.strings.add((a // 100).astype("U20"), "."), _TWO_DIGITS[a % 100])
    out[ok] = np.where(c < 0, np.strings.add("-", s), s)
    return out


def int_str(vals: np.ndarray) -> np.ndarray:
    out = np.full(len(vals), "", dtype="U20")
    ok = vals != ABSENT
    out[ok] = vals[ok].astype("U20")
    return out
