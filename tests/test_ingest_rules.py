"""Every contract rule: a file with a good row and a hand-written row breaking that rule (SPEC §2)."""

from __future__ import annotations

import json

import pytest

from orchestration.contract import CONTRACTS
from orchestration.ingest import ingest_source

HEADERS = {
    "channel_events": "event_id,occurred_at,channel,event_type,openid,unionid,wecom_external_userid,phone,member_id,campaign,wecom_staff_userid",
    "orders": "order_id,updated_at,created_at,paid_at,status,channel,gross_amount,discount_amount,refund_amount,points_redeemed,referral_code,openid,unionid,wecom_external_userid,phone,member_id",
    "referrals": "referral_id,updated_at,invited_at,mechanism,status,referrer_member_id,referrer_unionid,referrer_phone,referee_openid,referee_unionid,referee_phone,referee_member_id,order_id,commission_amount",
}
# batch date of every file below: 2024-01-31 (limit for timestamps: 2024-02-02 00:00 Asia/Shanghai)
GOOD = {
    "channel_events": "g1,2024-01-31T10:00:00+08:00,wecom,add_contact,o1,u1,w1,+86 138-0013-8000,m1,春节活动,staff1",
    "orders": "g1,2024-01-31 12:00:00,2024-01-31 10:00:00,2024-01-31 10:05:00,paid,mini_program,199.00,10.00,0,100,INV1,o1,,,,m1",
    "referrals": "g1,2024-01-31 12:00,2024-01-30 09:00,share_link,converted,m1,,,ro1,,,,ord1,5.00",
}

# (source, rule) -> (bad row, every rule the row breaks when more than one is unavoidable)
CASES: dict[tuple[str, str], tuple[str, tuple[str, ...]]] = {
    # ------------------------------------------------------------------ channel_events
    # a record that cannot be split into the header's columns: its columns are not read, so it also lacks
    # every required value (and identifier)
    ("channel_events", "row.malformed"): ("b1,2024-01-31T10:00:00+08:00,wecom,add_contact,o1,,,,,,,extra field", (
        "row.malformed", "event_id.required", "occurred_at.required", "channel.required", "event_type.required",
        "identifier.required")),
    ("channel_events", "event_id.required"): (",2024-01-31T10:00:00+08:00,wecom,add_contact,o1,,,,,,", ()),
    ("channel_events", "occurred_at.required"): ("b1,,wecom,add_contact,o1,,,,,,", ()),
    ("channel_events", "channel.required"): ("b1,2024-01-31T10:00:00+08:00,,add_contact,o1,,,,,,", ()),
    ("channel_events", "event_type.required"): ("b1,2024-01-31T10:00:00+08:00,wecom,  ,o1,,,,,,", ()),
    ("channel_events", "occurred_at.type"): ("b1,31/01/2024 10:00,wecom,add_contact,o1,,,,,,", ()),
    ("channel_events", "channel.in_set"): ("b1,2024-01-31T10:00:00+08:00,weibo,add_contact,o1,,,,,,", ()),
    ("channel_events", "event_type.in_set"): ("b1,2024-01-31T10:00:00+08:00,wecom,purchase,o1,,,,,,", ()),
    ("channel_events", "phone.type"): ("b1,2024-01-31T10:00:00+08:00,wecom,add_contact,o1,,,12345,,,", ()),
    ("channel_events", "identifier.required"): ("b1,2024-01-31T10:00:00+08:00,wecom,add_contact,null,0000,undefined,-1,Anonymous,,", ()),
    ("channel_events", "timestamp.after_batch"): ("b1,2024-02-02T00:00:00+08:00,wecom,add_contact,o1,,,,,,", ()),
    # ------------------------------------------------------------------ orders
    ("orders", "row.malformed"): ("b1,2024-01-31 12:00:00,2024-01-31 10:00:00,2024-01-31 10:05:00,paid,,199.00,0,0,0,,o1,,,", (
        "row.malformed", "order_id.required", "updated_at.required", "created_at.required", "status.required",
        "gross_amount.required", "identifier.required")),
    ("orders", "order_id.required"): (",2024-01-31 12:00:00,2024-01-31 10:00:00,2024-01-31 10:05:00,paid,,199.00,0,0,0,,o1,,,,", ()),
    ("orders", "updated_at.required"): ("b1,,2024-01-31 10:00:00,2024-01-31 10:05:00,paid,,199.00,0,0,0,,o1,,,,", ()),
    ("orders", "created_at.required"): ("b1,2024-01-31 12:00:00,,2024-01-31 10:05:00,paid,,199.00,0,0,0,,o1,,,,", ()),
    ("orders", "status.required"): ("b1,2024-01-31 12:00:00,2024-01-31 10:00:00,2024-01-31 10:05:00,,,199.00,0,0,0,,o1,,,,", ()),
    ("orders", "gross_amount.required"): ("b1,2024-01-31 12:00:00,2024-01-31 10:00:00,2024-01-31 10:05:00,paid,,,0,0,0,,o1,,,,", ()),
    ("orders", "updated_at.type"): ("b1,2024-13-01 12:00:00,2024-01-31 10:00:00,2024-01-31 10:05:00,paid,,199.00,0,0,0,,o1,,,,", ()),
    ("orders", "created_at.type"): ("b1,2024-01-31 12:00:00,yesterday,2024-01-31 10:05:00,paid,,199.00,0,0,0,,o1,,,,", ()),
    ("orders", "paid_at.type"): ("b1,2024-01-31 12:00:00,2024-01-31 10:00:00,2024-01-31T10:05:00 CST,paid,,199.00,0,0,0,,o1,,,,", ()),
    ("orders", "gross_amount.type"): ("b1,2024-01-31 12:00:00,2024-01-31 10:00:00,2024-01-31 10:05:00,paid,,19.999,0,0,0,,o1,,,,", ()),
    ("orders", "discount_amount.type"): ("b1,2024-01-31 12:00:00,2024-01-31 10:00:00,2024-01-31 10:05:00,paid,,199.00,abc,0,0,,o1,,,,", ()),
    ("orders", "refund_amount.type"): ("b1,2024-01-31 12:00:00,2024-01-31 10:00:00,2024-01-31 10:05:00,paid,,199.00,0,1.234,0,,o1,,,,", ()),
    ("orders", "points_redeemed.type"): ("b1,2024-01-31 12:00:00,2024-01-31 10:00:00,2024-01-31 10:05:00,paid,,199.00,0,0,1.5,,o1,,,,", ()),
    ("orders", "phone.type"): ("b1,2024-01-31 12:00:00,2024-01-31 10:00:00,2024-01-31 10:05:00,paid,,199.00,0,0,0,,o1,,,021-5555-1234,", ()),
    ("orders", "status.in_set"): ("b1,2024-01-31 12:00:00,2024-01-31 10:00:00,2024-01-31 10:05:00,pending,,199.00,0,0,0,,o1,,,,", ()),
    ("orders", "channel.in_set"): ("b1,2024-01-31 12:00:00,2024-01-31 10:00:00,2024-01-31 10:05:00,paid,tmall,199.00,0,0,0,,o1,,,,", ()),
    ("orders", "paid_at.required_when_paid"): ("b1,2024-01-31 12:00:00,2024-01-31 10:00:00,,shipped,,199.00,0,0,0,,o1,,,,", ()),
    ("orders", "created_at.after_updated_at"): ("b1,2024-01-31 12:00:00,2024-01-31 13:00:00,2024-01-31 13:05:00,paid,,199.00,0,0,0,,o1,,,,", ()),
    ("orders", "paid_at.before_created_at"): ("b1,2024-01-31 12:00:00,2024-01-31 10:00:00,2024-01-31 09:00:00,paid,,199.00,0,0,0,,o1,,,,", ()),
    # a negative gross is always below a (non-negative) discount as well
    ("orders", "gross_amount.negative"): ("b1,2024-01-31 12:00:00,2024-01-31 10:00:00,2024-01-31 10:05:00,paid,,-1.00,0,0,0,,o1,,,,", ("gross_amount.negative", "discount_amount.above_gross")),
    ("orders", "discount_amount.negative"): ("b1,2024-01-31 12:00:00,2024-01-31 10:00:00,2024-01-31 10:05:00,paid,,199.00,-5,0,0,,o1,,,,", ()),
    ("orders", "discount_amount.above_gross"): ("b1,2024-01-31 12:00:00,2024-01-31 10:00:00,2024-01-31 10:05:00,paid,,10.00,20.00,0,0,,o1,,,,", ()),
    ("orders", "refund_amount.status_mismatch"): ("b1,2024-01-31 12:00:00,2024-01-31 10:00:00,2024-01-31 10:05:00,refunded,,199.00,10.00,199.00,0,,o1,,,,", ()),
    ("orders", "points_redeemed.negative"): ("b1,2024-01-31 12:00:00,2024-01-31 10:00:00,2024-01-31 10:05:00,paid,,199.00,0,0,-5,,o1,,,,", ()),
    ("orders", "identifier.required"): ("b1,2024-01-31 12:00:00,2024-01-31 10:00:00,2024-01-31 10:05:00,paid,,199.00,0,0,0,,NONE, ,000000,null,", ()),
    ("orders", "timestamp.after_batch"): ("b1,2024-02-03 00:00:00,2024-01-31 10:00:00,2024-01-31 10:05:00,paid,,199.00,0,0,0,,o1,,,,", ()),
    # ------------------------------------------------------------------ referrals
    # an unquoted comma inside an amount
    ("referrals", "row.malformed"): ("b1,2024-01-31 12:00,2024-01-30 09:00,share_link,clicked,m1,,,ro1,,,,,5,00", (
        "row.malformed", "referral_id.required", "updated_at.required", "invited_at.required", "mechanism.required",
        "status.required", "referrer.required", "referee.required")),
    ("referrals", "referral_id.required"): (",2024-01-31 12:00,2024-01-30 09:00,share_link,clicked,m1,,,ro1,,,,,0", ()),
    ("referrals", "updated_at.required"): ("b1,,2024-01-30 09:00,share_link,clicked,m1,,,ro1,,,,,0", ()),
    ("referrals", "invited_at.required"): ("b1,2024-01-31 12:00,,share_link,clicked,m1,,,ro1,,,,,0", ()),
    ("referrals", "mechanism.required"): ("b1,2024-01-31 12:00,2024-01-30 09:00,,clicked,m1,,,ro1,,,,,0", ()),
    ("referrals", "status.required"): ("b1,2024-01-31 12:00,2024-01-30 09:00,share_link,,m1,,,ro1,,,,,0", ()),
    ("referrals", "updated_at.type"): ("b1,2024-01-31T12,2024-01-30 09:00,share_link,clicked,m1,,,ro1,,,,,0", ()),
    ("referrals", "invited_at.type"): ("b1,2024-01-31 12:00,20240130,share_link,clicked,m1,,,ro1,,,,,0", ()),
    ("referrals", "referrer_phone.type"): ("b1,2024-01-31 12:00,2024-01-30 09:00,share_link,clicked,m1,,1380013800,ro1,,,,,0", ()),
    ("referrals", "referee_phone.type"): ("b1,2024-01-31 12:00,2024-01-30 09:00,share_link,clicked,m1,,,ro1,,+1 415 555 0100,,,0", ()),
    ("referrals", "commission_amount.type"): ("b1,2024-01-31 12:00,2024-01-30 09:00,share_link,clicked,m1,,,ro1,,,,,1e3", ()),
    ("referrals", "mechanism.in_set"): ("b1,2024-01-31 12:00,2024-01-30 09:00,poster,clicked,m1,,,ro1,,,,,0", ()),
    ("referrals", "status.in_set"): ("b1,2024-01-31 12:00,2024-01-30 09:00,share_link,paid,m1,,,ro1,,,,,0", ()),
    ("referrals", "invited_at.after_updated_at"): ("b1,2024-01-31 12:00,2024-01-31 12:00:01,share_link,clicked,m1,,,ro1,,,,,0", ()),
    ("referrals", "order_id.required_when_converted"): ("b1,2024-01-31 12:00,2024-01-30 09:00,distributor,Converted,m1,,,ro1,,,,,8.80", ()),
    ("referrals", "commission_amount.negative"): ("b1,2024-01-31 12:00,2024-01-30 09:00,share_link,clicked,m1,,,ro1,,,,,-0.01", ()),
    ("referrals", "referrer.required"): ("b1,2024-01-31 12:00,2024-01-30 09:00,share_link,clicked,null,none,00000000000,ro1,,,,,0", ()),
    ("referrals", "referee.required"): ("b1,2024-01-31 12:00,2024-01-30 09:00,share_link,registered,m1,,,,undefined,,-1,,0", ()),
    ("referrals", "timestamp.after_batch"): ("b1,2024-01-31 12:00,2024-02-02 08:00,group_invite,clicked,m1,,,ro1,,,,,0", ("invited_at.after_updated_at", "timestamp.after_batch")),
}


def csv_file(source: str, *rows: str) -> str:
    return "\n".join([HEADERS[source], *rows]) + "\n"


def test_every_contract_rule_has_a_case():
    missing = [(s, r.name) for s, c in CONTRACTS.items() for r in c.rules if (s, r.name) not in CASES]
    assert not missing, f"contract rules without a hand-written bad row: {missing}"
    unknown = [k for k in CASES if k[1] not in {r.name for r in CONTRACTS[k[0]].rules}]
    assert not unknown


@pytest.mark.parametrize("source,rule", sorted(CASES))
def test_rule_quarantines_only_the_bad_row(source, rule, con, settings, land):
    bad, expected = CASES[(source, rule)]
    expected = set(expected or (rule,))
    land(f"{source}/{source}_20240131.csv", csv_file(source, GOOD[source], bad))
    report = ingest_source(con, source, settings, "t")
    key = CONTRACTS[source].key
    assert con.execute(f"SELECT {key}, _row_number FROM raw.{source}").fetchall() == [("g1", 1)]
    q = con.execute("SELECT row_number, rule, rules, source, original_row FROM raw.quarantine").fetchall()
    assert len(q) == 1
    row_number, first, rules, src, original = q[0]
    assert (row_number, src) == (2, source)
    assert set(rules.split(",")) == expected
    order = [r.name for r in CONTRACTS[source].rules]
    assert first == min(expected, key=order.index)
    if rule == "row.malformed":  # the record's text as delivered: its columns were not read
        assert json.loads(original) == {"malformed_record": bad}
    else:
        assert '"' + HEADERS[source].split(",")[0] + '"' in original
    assert report.rows_read == 2 and report.rows_loaded == 1 and report.rows_quarantined == 1
    assert {k for k, v in report.quarantine_by_rule.items() if v} == expected


def test_unless_and_defaults(con, settings, land):
    # an invited referral needs no referee; absent commission takes its default 0
    land("referrals/dt=2024-01-31/part-0.csv", csv_file("referrals", "r1,2024-01-31 12:00,2024-01-30 09:00,share_link,Invited ,m1,,,,,,,,"))
    land("orders/dt=2024-01-31/part-0.csv", "order_id,updated_at,created_at,status,gross_amount,member_id\no1,2024-01-31 12:00,2024-01-31 12:00,created,10,m1\n")
    assert ingest_source(con, "referrals", settings, "t").rows_loaded == 1
    assert ingest_source(con, "orders", settings, "t").rows_loaded == 1
    assert con.execute("SELECT status, commission_amount FROM raw.referrals").fetchall()[0][0] == "invited"
    row = con.execute("SELECT channel, discount_amount, refund_amount, points_redeemed, paid_at FROM raw.orders").fetchone()
    assert row[0] is None and float(row[1]) == 0 and float(row[2]) == 0 and row[3] == 0 and row[4] is None


def test_refund_rule_cases(con, settings, land):
    land("orders/orders_20240131.csv", csv_file(
        "orders",
        "ok1,2024-01-31 12:00,2024-01-31 10:00,2024-01-31 10:05,refunded,,100.00,10.00,90.00,0,,o1,,,,",
        "ok2,2024-01-31 12:00,2024-01-31 10:00,2024-01-31 10:05,partially_refunded,,100.00,10.00,89.99,0,,o1,,,,",
        "ok3,2024-01-31 12:00,2024-01-31 10:00,,cancelled,,100.00,,,0,,o1,,,,",
        "bad1,2024-01-31 12:00,2024-01-31 10:00,2024-01-31 10:05,partially_refunded,,100.00,10.00,90.00,0,,o1,,,,",
        "bad2,2024-01-31 12:00,2024-01-31 10:00,2024-01-31 10:05,partially_refunded,,100.00,10.00,0,0,,o1,,,,",
        "bad3,2024-01-31 12:00,2024-01-31 10:00,2024-01-31 10:05,refunded,,100.00,10.00,,0,,o1,,,,",
        "bad4,2024-01-31 12:00,2024-01-31 10:00,,created,,100.00,0,0.01,0,,o1,,,,",
    ))
    ingest_source(con, "orders", settings, "t")
    assert sorted(r[0] for r in con.execute("SELECT order_id FROM raw.orders").fetchall()) == ["ok1", "ok2", "ok3"]
    assert con.execute("SELECT list(DISTINCT rules) FROM raw.quarantine").fetchone()[0] == ["refund_amount.status_mismatch"]


def test_new_rule_of_known_kind_needs_no_code_and_unknown_kind_raises(con, settings, land, monkeypatch):
    import dataclasses

    import orchestration.contract as contract_mod
    from orchestration.contract import Rule
    from orchestration.quality import validate_contract

    ce = contract_mod.CONTRACTS["channel_events"]
    extra = dataclasses.replace(ce, rules=(*ce.rules, Rule("campaign.required", "required", ("campaign",), "x")))
    monkeypatch.setitem(contract_mod.CONTRACTS, "channel_events", extra)
    land("channel_events/ce_20240131.csv", csv_file("channel_events", GOOD["channel_events"], "b1,2024-01-31T10:00:00+08:00,wecom,add_contact,o1,,,,,,"))
    report = ingest_source(con, "channel_events", settings, "t")
    assert report.quarantine_by_rule["campaign.required"] == 1 and report.rows_loaded == 1
    assert validate_contract("channel_events", report.frame).unexpected_by_rule == report.quarantine_by_rule

    weird = dataclasses.replace(ce, rules=(*ce.rules, Rule("x.weird", "astrology", ("campaign",), "x")))
    monkeypatch.setitem(contract_mod.CONTRACTS, "channel_events", weird)
    land("channel_events/ce_20240201.csv", csv_file("channel_events", GOOD["channel_events"]))
    with pytest.raises(NotImplementedError, match="astrology"):
        ingest_source(con, "channel_events", settings, "t")
    with pytest.raises(NotImplementedError, match="astrology"):
        validate_contract("channel_events", report.frame)


def test_all_zeros_without_a_regex_agrees_with_the_pattern(con):
    """rules.all_zeros is ALL_ZEROS_PATTERN written without a regex: same answer (NULL included) on edge cases."""
    from orchestration.contract import ALL_ZEROS_PATTERN
    from orchestration.ingest.rules import all_zeros, lit

    values = [None, "", "0", "00", "000000", "0 ", " 0", "00a", "a00", "10", "01", "0.0", "-0", "O", "０", "0\n"]
    for v in values:
        x = "NULL::VARCHAR" if v is None else lit(v)
        fast, regex = con.execute(f"SELECT {all_zeros(x)}, regexp_full_match({x}, {lit(ALL_ZEROS_PATTERN)})").fetchone()
        assert fast == regex, repr(v)
    assert con.execute(f"SELECT {all_zeros(lit('000'))}").fetchone()[0] is True


def test_a_phone_on_the_block_list_in_any_spelling_blocks_it_in_every_spelling(con, tmp_path, land):
    """README: the block list is compared "phones once normalised". With `+86 138-0000-0000` on the list only that
    exact text was blocked: 13800000000 loaded, and staging kept it as an identifier that links strangers."""
    from orchestration.quality import validate_contract
    from orchestration.settings import load_settings

    data_dir = tmp_path / "data"
    data_dir.mkdir(exist_ok=True)
    (data_dir / "privdom.toml").write_text('placeholder_block_list = ["+86 138-0000-0000"]\n', encoding="utf-8")
    blocked = load_settings(data_dir)
    assert "13800000000" in blocked.placeholder_values
    (blocked.landing_dir / "channel_events").mkdir(parents=True)
    (blocked.landing_dir / "channel_events" / "ce_20240131.csv").write_text(csv_file(
        "channel_events",
        "p1,2024-01-31T10:00:00+08:00,wecom,add_contact,,,,+86 138-0000-0000,,,",
        "p2,2024-01-31T10:00:00+08:00,wecom,add_contact,,,,13800000000,,,",
        "p3,2024-01-31T10:00:00+08:00,wecom,add_contact,,,,8613800000000,,,",
        "p4,2024-01-31T10:00:00+08:00,wecom,add_contact,,,,+86 139-0013-9000,,,",
    ), encoding="utf-8")
    report = ingest_source(con, "channel_events", blocked, "t")
    assert con.execute("SELECT event_id FROM raw.channel_events").fetchall() == [("p4",)]
    assert report.quarantine_by_rule["identifier.required"] == 3
    assert validate_contract("channel_events", report.frame).unexpected_by_rule == report.quarantine_by_rule


def test_a_phone_that_normalises_to_a_placeholder_is_no_identifier(con, tmp_path, land):
    """Staging cleans the phone raw keeps, normalised: with 13800138000 on the block list, `+86 138-0013-8000`
    is no identifier there, so ingestion does not count it either (a row it loaded was left out of staging)."""
    from orchestration.quality import validate_contract
    from orchestration.settings import load_settings

    data_dir = tmp_path / "data"
    data_dir.mkdir(exist_ok=True)
    (data_dir / "privdom.toml").write_text('placeholder_block_list = ["13800138000"]\n', encoding="utf-8")
    blocked = load_settings(data_dir)
    (blocked.landing_dir / "channel_events").mkdir(parents=True)
    (blocked.landing_dir / "channel_events" / "ce_20240131.csv").write_text(csv_file(
        "channel_events",
        "p1,2024-01-31T10:00:00+08:00,wecom,add_contact,,,,+86 138-0013-8000,,,",
        "p2,2024-01-31T10:00:00+08:00,wecom,add_contact,,,,13800138000,,,",
        "p3,2024-01-31T10:00:00+08:00,wecom,add_contact,,,,+86 139-0013-9000,,,",
    ), encoding="utf-8")
    report = ingest_source(con, "channel_events", blocked, "t")
    assert con.execute("SELECT event_id FROM raw.channel_events").fetchall() == [("p3",)]
    assert report.quarantine_by_rule["identifier.required"] == 2
    assert validate_contract("channel_events", report.frame).unexpected_by_rule == report.quarantine_by_rule


def test_a_full_width_phone_on_the_block_list_blocks_its_eleven_digits(tmp_path):
    """Review: ingestion reads full-width digits as ASCII (typed_expr), so the data's phone loads as 13800000000
    whatever its spelling; a block-list entry typed in full-width (as a Chinese input method types it) must then
    block those 11 digits too, or it blocks nothing staging sees."""
    from orchestration.settings import load_settings

    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "privdom.toml").write_text(
        'placeholder_block_list = ["\uff11\uff13\uff18\uff10\uff10\uff10\uff10\uff10\uff10\uff10\uff10"]\n',
        encoding="utf-8")
    values = load_settings(data_dir).placeholder_values
    assert "13800000000" in values
