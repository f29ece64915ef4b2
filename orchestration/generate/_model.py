"""The simulated business: customers, their channel events, orders and referrals, as columnar integer arrays.

Every table is a dict of equally long numpy arrays. Keys named like contract columns hold that column in a
compact form (codes, epoch seconds, cents, sequence numbers); keys starting with ``_`` are generator state
(customer index, batch day, dirty rule, text styles). Strings are only built per batch at write time.
"""

from __future__ import annotations

import calendar
import datetime as dt
from dataclasses import dataclass

import numpy as np

from orchestration.contract import CHANNELS, EVENT_TYPES, ORDER_STATUSES, REFERRAL_MECHANISMS, REFERRAL_STATUSES

from ._text import ABSENT, PHONE_STYLES, SH_OFFSET, TS_STYLES

DAY = 86400
HOUR = 3600

CH = {c: i for i, c in enumerate(CHANNELS)}
ET = {e: i for i, e in enumerate(EVENT_TYPES)}
OS = {s: i for i, s in enumerate(ORDER_STATUSES)}
MECH = {m: i for i, m in enumerate(REFERRAL_MECHANISMS)}
RS = {s: i for i, s in enumerate(REFERRAL_STATUSES)}

# Campaigns / QR codes; every Chinese name must encode in GBK (checked at import).
CAMPAIGNS: tuple[str, ...] = (
    "双11预热", "社群拉新", "新人礼包", "会员日", "直播间福利", "门店扫码", "老带新", "618大促",
    "年货节", "企微加好友", "公众号推文", "spring_sale", "qr_store_001", "moments_ad", "kol_live_03",
)
for _c in CAMPAIGNS:
    _c.encode("gbk")
    assert "," not in _c and '"' not in _c and "\\" not in _c
REFERRAL_CAMPAIGN = CAMPAIGNS.index("老带新")

# Identifier codes in id columns: 0 absent, 1 the customer's value, 2 second value (mini-program openid),
# 3 a shared value (clerk phone / test member id), 10+k placeholder k.
PLACEHOLDERS: tuple[str, ...] = ("null", "-1", "anonymous", "undefined", "NULL", "None", "00000000000")
PH0 = 10
CLERK_PHONE = 19912345678  # customers' phones are drawn from [13e9, 19e9): no collision
TEST_MEMBER_ID = "MTEST001"
N_STAFF = 30


@dataclass
class World:
    n: int
    days: int
    start0: int  # epoch seconds of start_date 00:00 Asia/Shanghai
    end_ts: int  # start0 + days (exclusive): data never goes past it
    end_day: int  # last batch day index (days - 1)
    acq_t: np.ndarray
    acq_ch: np.ndarray
    referred: np.ndarray  # acquired through a referral click
    has_mp: np.ndarray
    has_union: np.ndarray
    has_wecom: np.ndarray
    has_phone: np.ndarray
    has_member: np.ndarray
    staff: np.ndarray
    life: np.ndarray  # active lifetime in seconds (churn)
    keys: dict  # hash constants for id strings


def start_epoch(d: dt.date) -> int:
    return calendar.timegm(d.timetuple()) - SH_OFFSET


def day_of(world: World, t: np.ndarray) -> np.ndarray:
    return ((t - world.start0) // DAY).astype(np.int32)


def _cat(parts: list[dict]) -> dict:
    parts = [p for p in parts if len(next(iter(p.values()))) > 0] or parts[:1]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _take(tab: dict, idx) -> dict:
    return {k: v[idx] for k, v in tab.items()}


# ------------------------------------------------------------------------------------------------- customers
def make_world(rng: np.random.Generator, customers: int, days: int, start_date: dt.date) -> World:
    n = customers
    start0 = start_epoch(start_date)
    d = np.arange(days)
    weekday = (start_date.weekday() + d) % 7
    w = (1.0 + 2.0 * d / max(days, 1)) * np.where(weekday >= 5, 1.35, 1.0)
    for frac, boost in ((0.45, 4.0), (0.85, 3.0)):  # promo spikes (and a warm-up day before each)
        p = int(days * frac)
        if 0 <= p < days:
            w[p] *= boost
            if p > 0:
                w[p - 1] *= 1.6
    acq_day = rng.choice(days, size=n, p=w / w.sum())
    hour_w = np.array([1, .5, .3, .2, .2, .3, .8, 2, 3, 4, 5, 5, 6, 5, 4, 4, 5, 5, 6, 8, 9, 9, 6, 3], float)
    hour = rng.choice(24, size=n, p=hour_w / hour_w.sum())
    acq_t = start0 + acq_day.astype(np.int64) * DAY + hour * HOUR + rng.integers(0, HOUR, n)
    acq_ch = rng.choice(len(CHANNELS), size=n, p=[0.30, 0.15, 0.12, 0.25, 0.10, 0.08]).astype(np.int8)
    has_union = rng.random(n) < 0.6
    has_wecom = (rng.random(n) < 0.33) | (acq_ch == CH["wecom"])
    has_phone = rng.random(n) < 0.5
    has_member = rng.random(n) < 0.35
    has_mp = rng.random(n) < 0.5
    staff = rng.integers(1, N_STAFF + 1, n).astype(np.int8)
    quiet = rng.random(n) < 0.25
    life = np.where(quiet, rng.exponential(5 * DAY, n), rng.exponential(60 * DAY, n)).astype(np.int64) + HOUR
    keys = {k: (int(rng.integers(1, 2**62)) | 1, int(rng.integers(0, 2**62))) for k in
            ("oa", "mp", "union", "wecom", "event", "order", "referral", "code")}
    keys["phone_off"] = int(rng.integers(0, 6 * 10**9))
    keys["member_perm"] = rng.permutation(n).astype(np.int64)
    return World(n, days, start0, start0 + days * DAY, days - 1, acq_t, acq_ch, np.zeros(n, bool), has_mp,
                 has_union, has_wecom, has_phone, has_member, staff, life, keys)


def phone_numbers(world: World, cust: np.ndarray) -> np.ndarray:
    return (cust.astype(np.int64) * 1_000_000_007 + world.keys["phone_off"]) % (6 * 10**9) + 13 * 10**9


# ------------------------------------------------------------------------------------------------- identifiers
# Probability that a row on a channel carries an identifier the customer has (columns: OA, wecom, group,
# mini_program, live, offline).
_P_UNION = np.array([0.6, 0.5, 0.9, 0.7, 0.9, 0.2])
_P_PHONE = np.array([0.05, 0.3, 0.05, 0.3, 0.05, 0.9])
_P_MEMBER = np.array([0.1, 0.1, 0.1, 0.5, 0.1, 0.8])
_P_OPENID = np.array([1.0, 0.3, 0.4, 0.3, 0.4, 0.3])


def id_codes(world: World, rng: np.random.Generator, cust: np.ndarray, ch: np.ndarray, *,
             force_member: np.ndarray | None = None) -> dict:
    """Identifier codes for rows of customers `cust` on channels `ch` (-1 = unknown channel)."""
    n = len(cust)
    c = np.where(ch < 0, CH["mini_program"], ch)
    u = rng.random((n, 6))
    mp = world.has_mp[cust]
    openid = np.zeros(n, np.int8)
    on_mp = c == CH["mini_program"]
    openid[(u[:, 0] < _P_OPENID[c])] = 1
    openid[on_mp & mp] = 2
    openid[c == CH["official_account"]] = 1
    union = (world.has_union[cust] & (u[:, 1] < _P_UNION[c])).astype(np.int8)
    wecom = (world.has_wecom[cust] & ((c == CH["wecom"]) | (u[:, 2] < 0.05))).astype(np.int8)
    phone = (world.has_phone[cust] & (u[:, 3] < _P_PHONE[c])).astype(np.int8)
    mem = world.has_member[cust] & (u[:, 4] < _P_MEMBER[c])
    if force_member is not None:
        mem |= force_member & world.has_member[cust]
    member = mem.astype(np.int8)
    none = (openid == 0) & (union == 0) & (wecom == 0) & (phone == 0) & (member == 0)
    openid[none] = np.where(on_mp[none] & mp[none], 2, 1)
    # placeholders in an otherwise empty column of rows that still carry a real identifier
    ph = u[:, 5] < 0.015
    which = rng.integers(0, 3, n)
    pv = (PH0 + rng.integers(0, len(PLACEHOLDERS), n)).astype(np.int8)
    for k, col in enumerate((union, phone, member)):
        sel = ph & (which == k) & (col == 0)
        col[sel] = pv[sel]
    return {"openid": openid, "unionid": union, "wecom_external_userid": wecom, "phone": phone, "member_id": member}


def _styles(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    ts = rng.choice(TS_STYLES, n, p=[0.55, 0.15, 0.15, 0.10, 0.05]).astype(np.int8)
    ph = rng.choice(PHONE_STYLES, n, p=[0.55, 0.10, 0.10, 0.10, 0.15]).astype(np.int8)
    return ts, ph


def _late(rng: np.random.Generator, n: int) -> np.ndarray:
    return np.where(rng.random(n) < 0.02, rng.integers(1, 21, n), 0).astype(np.int32)


# ------------------------------------------------------------------------------------------------- referrals (acquisition part)
@dataclass
class ReferralPlan:
    rr: np.ndarray  # referrer customer
    re: np.ndarray  # referee customer (-1: none)
    mech: np.ndarray
    invited: np.ndarray
    clicked: np.ndarray  # ABSENT when never clicked
    registered_p: np.ndarray  # uniform draw: reaches registered
    new_customer: np.ndarray  # the referee was acquired by this referral


def plan_referrals(world: World, rng: np.random.Generator) -> ReferralPlan:
    n = world.n
    eligible = world.has_member | world.has_union | world.has_phone
    promoter = eligible & (rng.random(n) < 0.15)
    distributor = promoter & (rng.random(n) < 0.2)
    weight = np.where(distributor, 4.0, 1.0) * rng.pareto(1.5, n) + 0.05
    pidx = np.flatnonzero(promoter)
    order = np.argsort(world.acq_t[pidx], kind="stable")
    pidx = pidx[order]
    pt = world.acq_t[pidx]
    cw = np.cumsum(weight[pidx])
    # referees: customers who first arrived through a referral click
    cand = np.flatnonzero(rng.random(n) < 0.28)
    k = np.searchsorted(pt, world.acq_t[cand] - HOUR, side="left")
    ok = k > 0
    cand, k = cand[ok], k[ok]
    target = rng.random(len(cand)) * cw[k - 1]
    pos = np.minimum(np.searchsorted(cw, target, side="right"), k - 1)
    rr = pidx[pos]
    re = cand
    world.referred[re] = True
    click = world.acq_t[re]
    gap = np.minimum(rng.exponential(DAY, len(re)).astype(np.int64), click - world.acq_t[rr] - 60)
    invited = np.maximum(click - np.maximum(gap, 30), world.start0)
    mech_other = rng.choice([MECH["share_link"], MECH["invite_code"], MECH["group_invite"]], len(re), p=[.45, .3, .25])
    mech = np.where(distributor[rr], MECH["distributor"], mech_other).astype(np.int8)
    # invitations nobody answered
    m = rng.poisson(0.9, len(pidx))
    rr2 = np.repeat(pidx, m)
    inv2 = world.acq_t[rr2] + (rng.random(len(rr2)) * (world.end_ts - world.acq_t[rr2])).astype(np.int64)
    mech2 = np.where(distributor[rr2], MECH["distributor"],
                     rng.choice([0, 1, 3], len(rr2)) if len(rr2) else np.zeros(0, int)).astype(np.int8)
    # a few invitations clicked by people who were already customers
    n3 = max(3, int(0.02 * len(re)))
    rr3 = pidx[rng.integers(0, len(pidx), n3)] if len(pidx) else np.zeros(0, np.int64)
    re3 = rng.integers(0, n, len(rr3))
    keep = rr3 != re3
    rr3, re3 = rr3[keep], re3[keep]
    inv3 = np.maximum(world.acq_t[rr3], world.acq_t[re3]) + rng.exponential(10 * DAY, len(rr3)).astype(np.int64)
    clk3 = inv3 + rng.integers(300, DAY, len(rr3))
    mech3 = np.where(distributor[rr3], MECH["distributor"], MECH["share_link"]).astype(np.int8)
    return ReferralPlan(
        rr=np.concatenate([rr, rr2, rr3]).astype(np.int64),
        re=np.concatenate([re, np.full(len(rr2), -1), re3]).astype(np.int64),
        mech=np.concatenate([mech, mech2, mech3]),
        invited=np.concatenate([invited, inv2, inv3]).astype(np.int64),
        clicked=np.concatenate([click, np.full(len(rr2), ABSENT), clk3]).astype(np.int64),
        registered_p=rng.random(len(rr) + len(rr2) + len(rr3)),
        new_customer=np.concatenate([np.ones(len(re), bool), np.zeros(len(rr2) + len(rr3), bool)]),
    )


# ------------------------------------------------------------------------------------------------- channel events
def make_events(world: World, rng: np.random.Generator) -> dict:
    n, parts = world.n, []
    allc = np.arange(n)

    def add(cust, t, ch, et, campaign=None, ids=None):
        cust = np.asarray(cust, np.int64)
        m = len(cust)
        parts.append({
            "_cust": cust, "occurred_at": np.asarray(t, np.int64), "channel": np.asarray(ch, np.int8),
            "event_type": np.asarray(et, np.int8),
            "campaign": (np.full(m, -1, np.int16) if campaign is None else np.asarray(campaign, np.int16)),
            "_ids": ids,
        })

    def camp(m, p):
        return np.where(rng.random(m) < p, rng.integers(0, len(CAMPAIGNS), m), -1)

    # first touch
    org = allc[~world.referred]
    ch = world.acq_ch[org]
    et = np.select(
        [ch == CH["official_account"], ch == CH["wecom"], ch == CH["community_group"]],
        [ET["follow"], ET["add_contact"], ET["join_group"]], ET["engage"])
    reg_first = ((ch == CH["mini_program"]) | (ch == CH["offline_store"])) & world.has_member[org]
    et = np.where(reg_first, ET["register_member"], et)
    add(org, world.acq_t[org], ch, et, camp(len(org), 0.75))
    ref = allc[world.referred]
    t = world.acq_t[ref] + rng.integers(60, 1800, len(ref))
    add(ref, t, np.full(len(ref), CH["mini_program"]),
        np.where(world.has_member[ref], ET["register_member"], ET["engage"]),
        np.where(rng.random(len(ref)) < 0.5, REFERRAL_CAMPAIGN, -1))
    first_ch = np.where(world.referred, CH["mini_program"], world.acq_ch)
    first_et = np.full(n, -1)
    first_et[org] = et
    first_et[ref] = np.where(world.has_member[ref], ET["register_member"], ET["engage"])

    def later(mask, mean_days):
        c = allc[mask]
        return c, world.acq_t[c] + rng.exponential(mean_days * DAY, len(c)).astype(np.int64) + 60

    # relationship starts on other channels
    u = rng.random((n, 4))
    f_c, f_t = later((first_et != ET["follow"]) & (u[:, 0] < 0.6), 7)
    c_c, c_t = later(world.has_wecom & (first_et != ET["add_contact"]) & (u[:, 1] < 0.8), 10)
    g_c, g_t = later((first_et != ET["join_group"]) & (u[:, 2] < 0.3), 12)
    r_c, r_t = later(world.has_member & (first_et != ET["register_member"]) & (u[:, 3] < 0.9), 5)
    add(f_c, f_t, np.full(len(f_c), CH["official_account"]), np.full(len(f_c), ET["follow"]), camp(len(f_c), 0.3))
    add(c_c, c_t, np.full(len(c_c), CH["wecom"]), np.full(len(c_c), ET["add_contact"]), camp(len(c_c), 0.3))
    add(g_c, g_t, np.full(len(g_c), CH["community_group"]), np.full(len(g_c), ET["join_group"]), camp(len(g_c), 0.3))
    add(r_c, r_t, np.where(rng.random(len(r_c)) < 0.75, CH["mini_program"], CH["offline_store"]),
        np.full(len(r_c), ET["register_member"]))
    # endings, and some who come back
    fol_c = np.concatenate([org[et == ET["follow"]], f_c])
    fol_t = np.concatenate([world.acq_t[org[et == ET["follow"]]], f_t])
    s = rng.random(len(fol_c)) < 0.15
    un_c, un_t = fol_c[s], fol_t[s] + rng.exponential(30 * DAY, s.sum()).astype(np.int64) + 60
    add(un_c, un_t, np.full(len(un_c), CH["official_account"]), np.full(len(un_c), ET["unfollow"]))
    s = rng.random(len(un_c)) < 0.3
    add(un_c[s], un_t[s] + rng.exponential(20 * DAY, s.sum()).astype(np.int64) + 60,
        np.full(s.sum(), CH["official_account"]), np.full(s.sum(), ET["follow"]), camp(s.sum(), 0.5))
    con_c = np.concatenate([org[et == ET["add_contact"]], c_c])
    con_t = np.concatenate([world.acq_t[org[et == ET["add_contact"]]], c_t])
    s = rng.random(len(con_c)) < 0.08
    add(con_c[s], con_t[s] + rng.exponential(40 * DAY, s.sum()).astype(np.int64) + 60,
        np.full(s.sum(), CH["wecom"]), np.full(s.sum(), ET["remove_contact"]))
    grp_c = np.concatenate([org[et == ET["join_group"]], g_c])
    grp_t = np.concatenate([world.acq_t[org[et == ET["join_group"]]], g_t])
    s = rng.random(len(grp_c)) < 0.2
    add(grp_c[s], grp_t[s] + rng.exponential(25 * DAY, s.sum()).astype(np.int64) + 60,
        np.full(s.sum(), CH["community_group"]), np.full(s.sum(), ET["leave_group"]))
    # consent
    oo_c, oo_t = later(rng.random(n) < 0.04, 30)
    oo_ch = np.where(world.has_wecom[oo_c] & (rng.random(len(oo_c)) < 0.5), CH["wecom"], CH["official_account"])
    add(oo_c, oo_t, oo_ch, np.full(len(oo_c), ET["opt_out"]))
    s = rng.random(len(oo_c)) < 0.5
    add(oo_c[s], oo_t[s] + rng.exponential(10 * DAY, s.sum()).astype(np.int64) + 60, oo_ch[s],
        np.full(s.sum(), ET["opt_in"]))
    # engagement, decaying over each customer's active life
    horizon = np.minimum(world.life, world.end_ts - world.acq_t)
    k = rng.poisson(0.22 * horizon / DAY)
    ec = np.repeat(allc, k)
    et_t = world.acq_t[ec] + (world.life[ec] * rng.random(len(ec)) ** 1.4).astype(np.int64) + 60
    ech = rng.choice(len(CHANNELS), len(ec), p=[0.15, 0.08, 0.12, 0.45, 0.15, 0.05])
    ech = np.where((ech == CH["wecom"]) & ~world.has_wecom[ec], CH["mini_program"], ech)
    add(ec, et_t, ech, np.full(len(ec), ET["engage"]), camp(len(ec), 0.2))

    tab = {k: np.concatenate([p[k] for p in parts]) for k in parts[0] if k != "_ids"}
    tab = _take(tab, tab["occurred_at"] < world.end_ts)
    m = len(tab["_cust"])
    ids = id_codes(world, rng, tab["_cust"], tab["channel"].astype(np.int64),
                   force_member=tab["event_type"] == ET["register_member"])
    tab.update(ids)
    # shared identifiers: a store clerk's phone and a test member id typed on many customers' rows
    extra = []
    for kind in ("clerk", "test"):
        kk = max(30, n // 250)
        c = rng.choice(n, size=min(kk, n), replace=False).astype(np.int64)
        t = world.acq_t[c] + (rng.random(len(c)) * (world.end_ts - world.acq_t[c])).astype(np.int64)
        chn = np.full(len(c), CH["offline_store"] if kind == "clerk" else CH["mini_program"], np.int8)
        ids = id_codes(world, rng, c, chn.astype(np.int64))
        col = "phone" if kind == "clerk" else "member_id"
        ids[col][:] = 3
        other = [x for x in ("openid", "member_id") if x != col][0]
        ids[other][ids[other] == 0] = 1
        solo = np.arange(len(c)) < 3  # a few rows name only the shared identifier
        for x in ids:
            if x != col:
                ids[x][solo] = 0
        extra.append({"_cust": c, "occurred_at": t, "channel": chn, "event_type": np.full(len(c), ET["engage"], np.int8),
                      "campaign": np.full(len(c), CAMPAIGNS.index("门店扫码") if kind == "clerk" else -1, np.int16), **ids})
    tab = _cat([tab, *extra])
    m = len(tab["_cust"])
    tab["wecom_staff_userid"] = np.where(tab["channel"] == CH["wecom"], world.staff[tab["_cust"]], -1).astype(np.int8)
    tab["event_id"] = np.arange(m, dtype=np.int64)
    tab["_tss"], tab["_phs"] = _styles(rng, m)
    tab["_batch"] = np.minimum(day_of(world, tab["occurred_at"]) + _late(rng, m), world.end_day).astype(np.int32)
    tab["_sort"] = tab["occurred_at"].copy()
    return tab


# ------------------------------------------------------------------------------------------------- orders
def make_orders(world: World, rng: np.random.Generator, plan: ReferralPlan) -> tuple[dict, dict]:
    """Order versions, plus per-customer first-order facts the referrals need."""
    n = world.n
    allc = np.arange(n)
    buyer = rng.random(n) < np.where(world.referred, 0.75, 0.6)
    quick = rng.random(n) < 0.7
    delay = np.where(world.referred, rng.exponential(3 * DAY, n),
                     np.where(quick, rng.exponential(6 * DAY, n), 30 * DAY + rng.exponential(60 * DAY, n)))
    first_t = world.acq_t + delay.astype(np.int64) + 120
    bc = allc[buyer]
    extra = rng.geometric(0.36, len(bc)) - 1
    quiet = world.life[bc] < 20 * DAY
    cnt = 1 + extra
    oc = np.repeat(bc, cnt)
    rank = np.arange(len(oc)) - np.repeat(np.cumsum(cnt) - cnt, cnt)
    gap_mean = np.repeat(np.where(quiet, 90 * DAY, 28 * DAY), cnt)
    gap = np.where(rank == 0, 0, rng.exponential(1.0, len(oc)) * gap_mean + HOUR).astype(np.int64)
    cs = np.cumsum(gap)
    start_of_group = np.repeat(np.cumsum(cnt) - cnt, cnt)
    cs = cs - cs[start_of_group] + gap[start_of_group]
    created = first_t[oc] + cs
    keep = created < world.end_ts
    oc, created, rank = oc[keep], created[keep], rank[keep]
    no = len(oc)
    seq = np.arange(no, dtype=np.int64)
    # what happens to each order
    u = rng.random(no)
    path = np.select([u < 0.08, u < 0.12, u < 0.17], [0, 2, 3], 1)  # 0 cancelled, 1 normal, 2 refund, 3 partial
    referee_first = (rank == 0) & world.referred[oc]
    path = np.where(referee_first & (path == 0), 1, path)
    has_created = (rng.random(no) < 0.75) | (path == 0)
    paid_at = created + rng.integers(30, 1800, no)
    t_ship = paid_at + rng.integers(int(0.3 * DAY), 3 * DAY, no)
    t_done = t_ship + rng.integers(2 * DAY, 10 * DAY, no)
    t_cancel = created + rng.integers(600, 2 * DAY, no)
    ship_refund = rng.random(no) < 0.5
    t_refund = np.where(path == 2, np.where(ship_refund, t_ship, paid_at) + rng.integers(DAY, 10 * DAY, no),
                        t_done + rng.integers(DAY, 15 * DAY, no))
    L = 5
    T = np.full((L, no), ABSENT, np.int64)
    S = np.full((L, no), -1, np.int8)
    T[0] = np.where(has_created, created, ABSENT); S[0] = OS["created"]
    T[1] = np.where(path == 0, t_cancel, paid_at); S[1] = np.where(path == 0, OS["cancelled"], OS["paid"])
    ship = (path == 1) | (path == 3) | ((path == 2) & ship_refund)
    T[2] = np.where(ship, t_ship, ABSENT); S[2] = OS["shipped"]
    T[3] = np.where((path == 1) | (path == 3), t_done, ABSENT); S[3] = OS["completed"]
    T[4] = np.where(path >= 2, t_refund, ABSENT)
    S[4] = np.where(path == 2, OS["refunded"], OS["partially_refunded"])
    # amounts
    gross = (np.round(np.exp(rng.normal(np.log(120), 0.7, no)) * 10) * 10 - 10).astype(np.int64)
    gross = np.maximum(gross, 990)
    disc = np.where(rng.random(no) < 0.35, (gross * rng.uniform(0.05, 0.25, no) / 100).astype(np.int64) * 100, 0)
    points = np.where(rng.random(no) < 0.2, 100 * rng.integers(1, 20, no), 0).astype(np.int64)
    net = gross - disc
    partial = 1 + (rng.random(no) * (net - 1)).astype(np.int64)
    ch_pref = rng.choice(len(CHANNELS) + 1, n, p=[0.0, 0.05, 0.03, 0.6, 0.15, 0.12, 0.05]) - 1
    och = np.where(rng.random(no) < 0.8, ch_pref[oc], -1).astype(np.int8)
    och = np.where(och == CH["official_account"], -1, och).astype(np.int8)
    och = np.where((och == CH["wecom"]) & ~world.has_wecom[oc], CH["mini_program"], och).astype(np.int8)
    # referral codes on a referee's first order
    first_ref = np.full(n, -1, np.int64)
    newp = np.flatnonzero(plan.new_customer)
    first_ref[plan.re[newp]] = newp
    pr = np.where(referee_first, first_ref[oc], -1)
    code_mech = np.where(pr >= 0, plan.mech[np.maximum(pr, 0)], -1)
    use_code = (code_mech == MECH["invite_code"]) | (code_mech == MECH["distributor"])
    rcode = np.where(use_code, plan.rr[np.maximum(pr, 0)], -1).astype(np.int64)
    # expand to versions and batches: each version in a later batch than the one before
    late = _late(rng, L * no).reshape(L, no)
    B = np.full((L, no), -1, np.int32)
    prev = np.full(no, -1, np.int64)
    for k in range(L):
        ok = (T[k] != ABSENT) & (T[k] < world.end_ts)
        b = np.maximum(day_of(world, np.where(ok, T[k], world.start0)) + late[k], prev + 1)
        b = np.where(prev < 0, np.minimum(b, world.end_day), b)  # a first version is always delivered
        ok &= b <= world.end_day
        B[k] = np.where(ok, b, -1)
        prev = np.where(ok, b, prev)
    vk, vo = np.nonzero(B >= 0)
    st = S[vk, vo]
    paid_like = (st != OS["created"]) & (st != OS["cancelled"])
    refund = np.select([st == OS["refunded"], st == OS["partially_refunded"]], [net[vo], partial[vo]], 0)
    nv = len(vo)
    blank = rng.random((3, nv)) < 0.4
    tab = {
        "order_id": seq[vo],
        "updated_at": T[vk, vo],
        "created_at": created[vo],
        "paid_at": np.where(paid_like, paid_at[vo], ABSENT),
        "status": st.astype(np.int8),
        "channel": och[vo],
        "gross_amount": gross[vo],
        "discount_amount": np.where((disc[vo] == 0) & blank[0], ABSENT, disc[vo]),
        "refund_amount": np.where((refund == 0) & blank[1], ABSENT, refund),
        "points_redeemed": np.where((points[vo] == 0) & blank[2], ABSENT, points[vo]),
        "referral_code": rcode[vo],
        "_rcm": code_mech[vo].astype(np.int8),
        "_cust": oc[vo].astype(np.int64),
        "_batch": B[vk, vo],
    }
    # the buyer's identifiers; one order names one buyer (the subset may vary by version)
    ids = id_codes(world, rng, tab["_cust"], tab["channel"].astype(np.int64))
    clerk = (tab["channel"] == CH["offline_store"]) & (rng.random(nv) < 0.1)
    ids["phone"][clerk] = 3
    has_other = (ids["openid"] > 0) & (ids["openid"] < PH0) | (ids["member_id"] == 1)
    ids["member_id"][clerk & ~has_other & world.has_member[tab["_cust"]]] = 1
    ids["openid"][clerk & ~has_other & ~world.has_member[tab["_cust"]]] = 1
    tab.update(ids)
    tab["_tss"], tab["_phs"] = _styles(rng, nv)
    tab["_sort"] = tab["updated_at"].copy()
    # first orders for referrals: the customer's earliest order (rank 0) and its times
    fo = np.flatnonzero(rank == 0)
    first = {
        "seq": np.full(n, -1, np.int64), "created": np.full(n, ABSENT, np.int64),
        "paid": np.full(n, ABSENT, np.int64), "paid_like": np.zeros(n, bool), "net": np.zeros(n, np.int64),
    }
    first["seq"][oc[fo]] = seq[fo]
    first["created"][oc[fo]] = created[fo]
    first["paid"][oc[fo]] = paid_at[fo]
    # converted only when the paid version was actually delivered
    paid_delivered = B[1] >= 0
    first["paid_like"][oc[fo]] = (path[fo] != 0) & paid_delivered[fo]
    first["net"][oc[fo]] = net[fo]
    return tab, first


# ------------------------------------------------------------------------------------------------- referrals
def make_referrals(world: World, rng: np.random.Generator, plan: ReferralPlan, first: dict) -> dict:
    nr = len(plan.rr)
    re = plan.re
    has_re = re >= 0
    rec = np.maximum(re, 0)
    clicked = plan.clicked
    show_invited = (rng.random(nr) < 0.7) | ~has_re
    t_reg = np.where(has_re & (plan.registered_p < 0.75), clicked + rng.integers(120, 2 * DAY, nr), ABSENT)
    fo_ok = has_re & plan.new_customer & first["paid_like"][rec] & (first["created"][rec] != ABSENT)
    fo_ok &= (first["created"][rec] - clicked) < 30 * DAY
    prev_t = np.where(t_reg != ABSENT, t_reg, clicked)
    t_conv = np.where(fo_ok, np.maximum(first["paid"][rec], prev_t) + rng.integers(60, HOUR, nr), ABSENT)
    L = 4
    T = np.stack([np.where(show_invited, plan.invited, ABSENT), np.where(has_re, clicked, ABSENT), t_reg, t_conv])
    late = _late(rng, L * nr).reshape(L, nr)
    B = np.full((L, nr), -1, np.int32)
    prev = np.full(nr, -1, np.int64)
    for k in range(L):
        ok = (T[k] != ABSENT) & (T[k] < world.end_ts)
        b = np.maximum(day_of(world, np.where(ok, T[k], world.start0)) + late[k], prev + 1)
        b = np.where(prev < 0, np.minimum(b, world.end_day), b)
        ok &= b <= world.end_day
        B[k] = np.where(ok, b, -1)
        prev = np.where(ok, b, prev)
    vk, vr = np.nonzero(B >= 0)
    nv = len(vr)
    mech = plan.mech[vr]
    net = first["net"][rec[vr]]
    comm = np.select(
        [mech == MECH["distributor"], (mech == MECH["invite_code"]) & (rng.random(nv) < 0.3)],
        [(net * rng.uniform(0.05, 0.15, nv)).astype(np.int64), 500], 0)
    conv = vk == RS["converted"]
    comm = np.where(conv, comm, 0)
    comm = np.where((comm == 0) & (rng.random(nv) < 0.5), ABSENT, comm)
    tab = {
        "referral_id": vr.astype(np.int64),
        "updated_at": T[vk, vr],
        "invited_at": plan.invited[vr],
        "mechanism": mech.astype(np.int8),
        "status": vk.astype(np.int8),
        "order_id": np.where(conv, first["seq"][rec[vr]], -1).astype(np.int64),
        "commission_amount": comm.astype(np.int64),
        "_rr": plan.rr[vr],
        "_re": re[vr],
        "_cust": plan.rr[vr],
        "_batch": B[vk, vr],
    }
    # referrer identifiers (one person across versions)
    rr = tab["_rr"]
    u = rng.random((3, nv))
    mem = world.has_member[rr] & (u[0] < 0.9)
    uni = world.has_union[rr] & (u[1] < 0.6)
    pho = world.has_phone[rr] & (u[2] < 0.5)
    none = ~(mem | uni | pho)
    mem |= none & world.has_member[rr]
    uni |= none & ~world.has_member[rr] & world.has_union[rr]
    pho |= none & ~world.has_member[rr] & ~world.has_union[rr]
    tab["referrer_member_id"] = mem.astype(np.int8)
    tab["referrer_unionid"] = uni.astype(np.int8)
    tab["referrer_phone"] = pho.astype(np.int8)
    # referee identifiers: an openid from the click on, more once registered
    r = np.maximum(tab["_re"], 0)
    hr = tab["_re"] >= 0
    later = hr & (tab["status"] >= RS["registered"])
    v = rng.random((3, nv))
    tab["referee_openid"] = np.where(hr, np.where(world.has_mp[r], 2, 1), 0).astype(np.int8)
    tab["referee_unionid"] = (hr & world.has_union[r] & (v[0] < 0.5)).astype(np.int8)
    tab["referee_phone"] = (later & world.has_phone[r] & (v[1] < 0.7)).astype(np.int8)
    tab["referee_member_id"] = (later & world.has_member[r] & (v[2] < 0.7)).astype(np.int8)
    tab["_tss"], tab["_phs"] = _styles(rng, nv)
    tab["_sort"] = tab["updated_at"].copy()
    return tab
