"""Dirty rows: for every rule of the contract, extra rows that break exactly that rule.

The rules are read from ``orchestration.contract``; each rule *kind* has a breaker here, so a new rule of a
known kind on a known column is covered automatically, and anything else fails loudly naming the rule.
"""

from __future__ import annotations

import numpy as np

from orchestration.contract import CONTRACTS, Rule

from ._model import DAY, HOUR, OS, PH0, PLACEHOLDERS, RS
from ._text import ABSENT

NEUTRAL_STATUSES = np.array([OS["created"], OS["paid"], OS["shipped"], OS["completed"], OS["cancelled"]])
# Bad text for `type` rules (text formats only: Parquet types cannot hold them).
BAD_TYPE_TEXT = {"timestamp": "2024-13-45", "decimal": "19.999", "integer": "3.5", "phone": "12345"}
BAD_ENUM_TEXT = {"channel": "tiktok", "event_type": "click", "status": "pending", "mechanism": "poster"}
# Ids a column's sibling identifiers: a phone made invalid keeps another real identifier on the row.
_GROUPS = {"phone": ("openid", "unionid", "wecom_external_userid", "member_id"),
           "referrer_phone": ("referrer_member_id", "referrer_unionid"),
           "referee_phone": ("referee_openid", "referee_unionid", "referee_member_id")}


def absent_value(source: str, col: str):
    typ = CONTRACTS[source].column(col).type
    if CONTRACTS[source].column(col).is_identifier:
        return 0
    if typ in ("timestamp", "decimal", "integer"):
        return ABSENT
    return -1  # enums, sequence-number ids, campaign, staff, codes


def present(source: str, tab: dict, col: str) -> np.ndarray:
    v = tab[col]
    if CONTRACTS[source].column(col).is_identifier:
        return (v > 0) & (v < PH0)
    return v != absent_value(source, col)


def _status_in(tab, names) -> np.ndarray:
    return np.isin(tab["status"], [OS[s] for s in names])


def _eligible(source: str, rule: Rule, tab: dict, text: np.ndarray) -> np.ndarray:
    c = CONTRACTS[source]
    m = (tab["_dirty"] < 0) & (tab["_dup"] == 0)
    neutral = np.isin(tab["status"], NEUTRAL_STATUSES) if source == "orders" else None
    referee_ok = (tab["status"] != RS["invited"]) & (tab["_re"] >= 0) if source == "referrals" else None
    k, cols = rule.kind, rule.columns
    if k == "required":
        m &= present(source, tab, cols[0])
        if source == "orders" and cols[0] in ("status", "gross_amount"):
            m &= neutral
        if source == "referrals" and cols[0] == "status":
            m &= referee_ok
    elif k == "type":
        typ = c.column(cols[0]).type
        if typ in ("timestamp", "decimal", "integer"):
            m &= text
        if typ == "timestamp":
            m &= present(source, tab, cols[0])
        if typ == "decimal" and source == "orders":
            m &= neutral
        if typ == "phone":
            grp = _GROUPS.get(cols[0])
            if grp is None:
                raise NotImplementedError(f"generator cannot break rule {source}:{rule.name} (phone column unknown)")
            other = np.zeros(len(m), bool)
            for g in grp:
                other |= (tab[g] == 1) | (tab[g] == 2)
            m &= other
    elif k == "in_set":
        if cols[0] == "status":
            m &= neutral if source == "orders" else referee_ok
    elif k == "non_negative":
        if source == "orders" and cols[0] in ("gross_amount", "discount_amount"):
            m &= neutral & (tab["gross_amount"] > 0)
    elif k == "not_after":
        m &= present(source, tab, cols[0]) & present(source, tab, cols[1])
        if c.column(cols[0]).type == "decimal":
            m &= (tab[cols[1]] > 0)
            if neutral is not None:
                m &= neutral
    elif k == "required_when":
        m &= np.isin(tab[cols[1]], [c.column(cols[1]).values.index(v) for v in rule.values])
        m &= present(source, tab, cols[0])
    elif k == "refund_matches_status":
        m &= _status_in(tab, ("paid", "shipped", "completed")) & (tab["gross_amount"] - np.maximum(tab["discount_amount"], 0) > 100)
    elif k == "any_identifier":
        if rule.unless is not None:
            col, vals = rule.unless
            m &= ~np.isin(tab[col], [c.column(col).values.index(v) for v in vals])
            m &= tab["_re"] >= 0
    elif k == "before_batch_limit":
        m &= present(source, tab, cols[0])
    else:
        raise NotImplementedError(f"generator cannot break rule {source}:{rule.name} (kind {k!r})")
    return m


def _break(source: str, rule: Rule, d: dict, rng: np.random.Generator, start0: int) -> None:
    c = CONTRACTS[source]
    k, cols = rule.kind, rule.columns
    n = len(d["_batch"])
    if k == "required" or k == "required_when":
        d[cols[0]][:] = absent_value(source, cols[0])
    elif k == "type":
        if c.column(cols[0]).is_identifier:
            d[cols[0]][:] = 1  # present; the text is overridden at render time
    elif k == "in_set":
        d[cols[0]][:] = -2
    elif k == "non_negative":
        v = d[cols[0]]
        d[cols[0]] = np.where((v != ABSENT) & (v > 0), -v, -100 if c.column(cols[0]).type == "integer" else -300)
        for r in c.rules:  # a smaller column that must not exceed this one: leave it absent
            if r.kind == "not_after" and r.columns[1] == cols[0]:
                d[r.columns[0]][:] = absent_value(source, r.columns[0])
    elif k == "not_after":
        a, b = cols
        if c.column(a).type == "timestamp":
            d[b] = d[a] - HOUR
        else:
            d[a] = d[b] + 1000
    elif k == "refund_matches_status":
        d["refund_amount"][:] = 100
    elif k == "any_identifier":
        for col in cols:
            z = rng.random(n) < 0.5
            d[col] = np.where(z, 0, PH0 + rng.integers(0, len(PLACEHOLDERS), n)).astype(np.int8)
    elif k == "before_batch_limit":
        limit = start0 + (d["_batch"].astype(np.int64) + 2) * DAY
        d[cols[0]] = limit + rng.integers(HOUR, 2 * DAY, n)
    else:  # pragma: no cover - _eligible raised already
        raise NotImplementedError(f"generator cannot break rule {source}:{rule.name} (kind {k!r})")


def inject(source: str, tab: dict, text: np.ndarray, dirty_rate: float, rng: np.random.Generator,
           start0: int, next_seq: int) -> tuple[dict | None, dict[str, int]]:
    """Dirty copies of clean rows, each breaking one rule; returns (rows, counts by 'source:rule')."""
    # row.malformed is about a file's syntax (a CSV row's field count, a JSON Lines line), not a row's values:
    # the generator writes well-formed files, and tests write malformed records by hand
    # (index in the contract's rules, which _write and the `_dirty` column use; the rule)
    rules = [(i, r) for i, r in enumerate(CONTRACTS[source].rules) if r.kind != "well_formed"]
    counts: dict[str, int] = {}
    if dirty_rate <= 0:
        return None, counts
    n_rows = len(tab["_batch"])
    total = int(round(dirty_rate * n_rows))
    per = [total // len(rules) + (1 if i < total % len(rules) else 0) for i in range(len(rules))]
    parts = []
    for j, (ri, rule) in enumerate(rules):
        for col in rule.columns:
            if col not in tab:
                raise NotImplementedError(f"generator cannot break rule {source}:{rule.name}: no column {col!r}")
        elig = np.flatnonzero(_eligible(source, rule, tab, text))
        want = min(max(per[j], 1), len(elig))
        if want == 0:
            continue
        pick = np.sort(rng.choice(elig, size=want, replace=False))
        d = {k: v[pick].copy() for k, v in tab.items()}
        if source == "channel_events":  # new events, not conflicting re-deliveries of existing ones
            d["event_id"] = np.arange(next_seq, next_seq + want, dtype=np.int64)
            next_seq += want
        _break(source, rule, d, rng, start0)
        d["_dirty"][:] = ri
        parts.append(d)
        counts[f"{source}:{rule.name}"] = want
    if not parts:
        return None, counts
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}, counts
