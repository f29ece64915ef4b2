"""Syncs to a webhook and to WeCom tags against local HTTP servers on 127.0.0.1 that answer in a scripted
order: 200, 429, 500, timeouts, dropped connections and duplicate deliveries."""

from __future__ import annotations

import datetime as dt
import http.server
import json
import threading
from urllib.parse import parse_qs, urlsplit

import pytest

from orchestration.segments import (
    DestinationConfigError,
    WebhookClient,
    WeComClient,
    build_membership,
    parse_definitions,
    parse_destinations,
    sync_segment,
)
from orchestration.segments.destinations import DestinationUnavailable, client_for
from orchestration.warehouse import connect
from tests.segments_helpers import LocalHTTPServer, ScriptedServer, customer, query, write_dim_customers

SECRET = "s3cret"
BUYERS = {"buyers": {"version": 1, "purpose": "anyone who paid", "rule": [{"column": "paid_orders", "op": "gte", "value": 1}]}}


def _defs():
    return parse_definitions([("defaults", {}), ("privdom.toml", BUYERS)])


def _webhook(url, **over):
    table = {"type": "webhook", "url": url, "secret_env": "TEST_WEBHOOK_SECRET", "segments": ["buyers"],
             "batch_size": 2, "timeout_seconds": 0.5, "max_attempts": 4, "backoff_seconds": 0.01, "max_backoff_seconds": 0.05}
    table.update(over)
    (config,) = parse_destinations({"crm": table}, ["buyers"])
    return config


def _buyer(key, **over):
    # a live WeCom contact (its id is the contact handle)
    return customer(key, **{"paid_orders": 1, "wecom_external_userid": f"wm{key}", "wecom_staff_userid": "staff1",
                            "reachable_channels": "official_account,wecom", **over})


@pytest.fixture
def warehouse(tmp_path):
    path = tmp_path / "warehouse.duckdb"
    write_dim_customers(path, [_buyer(f"C{i}") for i in range(1, 8)] + [customer("N1")])
    _rebuild(path)
    return path


def _rebuild(path):
    con = connect(path)
    try:
        build_membership(con, _defs(), dt.datetime(2024, 7, 1, tzinfo=dt.UTC))
    finally:
        con.close()


def _sql(path, statement):
    con = connect(path)
    try:
        con.execute(statement)
    finally:
        con.close()
    _rebuild(path)


def _sync(path, config, client, run_id):
    con = connect(path)
    try:
        return sync_segment(con, config, client, "buyers", 1, sync_run_id=run_id)
    finally:
        con.close()


def _log(path, run_id):
    return query(path, "select customer_key, operation, status, error, attempts, batch_key from segments.sync_log where sync_run_id = ? order by customer_key", [run_id])


def _state(path):
    return {r[0] for r in query(path, "select customer_key from segments.sync_state where destination = 'crm' and segment = 'buyers'")}


def test_webhook_delivers_every_row_exactly_once_through_429_500_timeouts_drops_and_duplicates(warehouse):
    # 7 members, batches of 2: [C1 C2] [C3 C4] [C5 C6] [C7]
    script = [
        "429", "ok",          # batch 1: rate limited, then accepted
        "500", "drop", "ok",  # batch 2: server error; applied but the connection dropped; the retry is a duplicate
        "timeout", "ok",      # batch 3: applied too slowly (client timed out); the retry is a duplicate
        "ok",                 # batch 4
    ]
    with ScriptedServer(script, SECRET, sleep_seconds=1.0) as server:
        config = _webhook(server.url + "/hook")
        client = WebhookClient(config, SECRET, sleep=lambda s: None)
        report = _sync(warehouse, config, client, "run-1")
        requests_first = list(server.requests)
        # every row took effect exactly once at the receiver, whatever was delivered twice
        assert server.members == {f"C{i}": 1 for i in range(1, 8)}
        assert server.bad_signatures == 0
        assert sorted(server.applied_keys.values()) == [1, 1, 2, 2]  # two batches were delivered twice, same key
        assert len(requests_first) == 8 and report.requests == 8
        # the sync log tells the story: every row accepted once, with the attempts it took
        log = _log(warehouse, "run-1")
        assert [(k, op, status) for k, op, status, *_ in log] == [(f"C{i}", "add", "accepted") for i in range(1, 8)]
        attempts = {k: a for k, _, _, _, a, _ in log}
        assert attempts == {"C1": 2, "C2": 2, "C3": 3, "C4": 3, "C5": 2, "C6": 2, "C7": 1}
        assert len({key for *_, key in log}) == 4  # one idempotency key per batch
        assert (report.accepted, report.failed, report.to_add, report.to_remove) == (7, 0, 7, 0)
        assert _state(warehouse) == {f"C{i}" for i in range(1, 8)}
        # a second sync with no change sends nothing
        again = _sync(warehouse, config, client, "run-2")
        assert len(server.requests) == len(requests_first) and again.requests == 0
        assert (again.to_add, again.to_remove) == (0, 0) and _log(warehouse, "run-2") == []


def test_failed_rows_are_resent_next_sync_and_state_only_advances_for_accepted_rows(warehouse):
    with ScriptedServer([], SECRET) as server:
        config = _webhook(server.url + "/hook", batch_size=10)
        client = WebhookClient(config, SECRET, sleep=lambda s: None)
        _sync(warehouse, config, client, "run-1")
        assert _state(warehouse) == {f"C{i}" for i in range(1, 8)}
        # C6 and C7 leave the segment (mirror: removed), N1 joins; the destination is down for the removes
        _sql(warehouse, "update marts.dim_customers set paid_orders = 0 where customer_key in ('C6', 'C7')")
        _sql(warehouse, "update marts.dim_customers set paid_orders = 2, wecom_external_userid = 'wmN1' where customer_key = 'N1'")
        server.script = ["500", "500", "500", "500"]
        report = _sync(warehouse, config, client, "run-2")
        assert report.failed == 3 and report.accepted == 0 and "stopped sending" in report.error
        log = _log(warehouse, "run-2")
        assert [(k, op, status) for k, op, status, *_ in log] == [("C6", "remove", "failed"), ("C7", "remove", "failed"), ("N1", "add", "failed")]
        assert "gave up after 4 attempts: HTTP 500" in log[0][3] and log[2][3].startswith("not sent")
        assert _state(warehouse) == {f"C{i}" for i in range(1, 8)}  # nothing the destination did not accept
        assert "N1" not in server.members and server.removed == {}
        # next sync: the receiver rejects N1 once, accepts the rest
        server.script = ["ok", "reject:N1"]
        report = _sync(warehouse, config, client, "run-3")
        assert (report.to_remove, report.to_add, report.accepted, report.failed) == (2, 1, 2, 1)
        assert server.removed == {"C6": 1, "C7": 1}
        assert _state(warehouse) == {f"C{i}" for i in range(1, 6)}
        assert [r for r in _log(warehouse, "run-3") if r[0] == "N1"][0][2:4] == ("failed", "unknown contact")
        # and again: only N1 is sent
        report = _sync(warehouse, config, client, "run-4")
        assert (report.to_add, report.to_remove, report.accepted) == (1, 0, 1)
        assert server.requests[-1]["rows"] == ["N1"] and server.members["N1"] == 1
        assert _state(warehouse) == {"C1", "C2", "C3", "C4", "C5", "N1"}
        assert _sync(warehouse, config, client, "run-5").requests == 0


def test_additive_mode_keeps_leavers_but_always_removes_opted_out_and_unreachable(warehouse):
    with ScriptedServer([], SECRET) as server:
        config = _webhook(server.url + "/hook", mode="additive", batch_size=10)
        client = WebhookClient(config, SECRET, sleep=lambda s: None)
        _sync(warehouse, config, client, "run-1")
        _sql(warehouse, "update marts.dim_customers set paid_orders = 0 where customer_key = 'C1'")  # left, still reachable
        _sql(warehouse, "update marts.dim_customers set opted_out = true, is_reachable = false where customer_key = 'C2'")
        _sql(warehouse, "update marts.dim_customers set is_reachable = false where customer_key = 'C3'")
        report = _sync(warehouse, config, client, "run-2")
        assert report.to_remove == 2 and server.removed == {"C2": 1, "C3": 1}
        # each remove says why, as the export's removes file does (privacy review: the receiver must stop
        # contacting an opted-out customer in its other lists too)
        assert server.remove_reasons == {"C2": "opted_out", "C3": "unreachable"}
        assert _state(warehouse) == {"C1", "C4", "C5", "C6", "C7"}
        # mirror mode on the same change removes the leaver too
        mirror = _webhook(server.url + "/hook", batch_size=10)
        (mirror_cfg,) = parse_destinations({"crm_mirror": {**{k: getattr(mirror, k) for k in ("type", "url", "secret_env", "mode", "batch_size")}, "segments": ["buyers"]}}, ["buyers"])
        con = connect(warehouse)
        con.execute("insert into segments.sync_state (destination, segment, customer_key) values ('crm_mirror', 'buyers', 'C1')")
        con.close()
        con = connect(warehouse)
        rep = sync_segment(con, mirror_cfg, WebhookClient(mirror_cfg, SECRET, sleep=lambda s: None), "buyers", 1, sync_run_id="m1")
        con.close()
        assert rep.to_remove == 1 and server.removed["C1"] == 1 and server.remove_reasons["C1"] == "left_segment"


def test_a_definition_that_selects_the_suppressed_sends_none_of_them(warehouse):
    """Even a members table that was tampered with: the sync re-checks dim_customers before sending."""
    _sql(warehouse, "update marts.dim_customers set opted_out = true, is_reachable = false where customer_key = 'C1'")
    _sql(warehouse, "update marts.dim_customers set is_reachable = false where customer_key = 'C2'")
    con = connect(warehouse)
    con.execute("insert into segments.segment_members (segment, segment_version, customer_key, wecom_external_userid, wecom_staff_userid) values ('buyers', 1, 'C1', 'wmC1', 'staff1'), ('buyers', 1, 'C2', 'wmC2', 'staff1')")
    con.close()
    with ScriptedServer([], SECRET) as server:
        config = _webhook(server.url + "/hook", batch_size=100)
        _sync(warehouse, config, WebhookClient(config, SECRET, sleep=lambda s: None), "run-1")
        sent = {k for r in server.requests for k in r["rows"]}
    assert sent == {"C3", "C4", "C5", "C6", "C7"}


def test_wrong_signature_secret_is_refused_and_rows_fail(warehouse):
    with ScriptedServer([], SECRET) as server:
        config = _webhook(server.url + "/hook", batch_size=100)
        report = _sync(warehouse, config, WebhookClient(config, "not-the-secret", sleep=lambda s: None), "run-1")
        assert report.failed == 7 and server.members == {}
    assert all(r[2] == "failed" and r[3].startswith("HTTP 401") for r in _log(warehouse, "run-1"))
    assert _state(warehouse) == set()


def test_idempotency_key_and_body_are_deterministic_and_signed():
    config = _webhook("https://example.com/hook")
    client = WebhookClient(config, SECRET)
    rows = [{"customer_key": "C1", "contact_channel": "wecom", "contact_handle": "wm1", "phone_sha256": None}]
    key1, body1 = client.batch_body("buyers", 1, "add", rows, "run-1")
    key2, body2 = client.batch_body("buyers", 1, "add", rows, "run-1")
    key3, _ = client.batch_body("buyers", 1, "remove", rows, "run-1")
    key4, _ = client.batch_body("buyers", 1, "add", rows, "run-2")
    assert (key1, body1) == (key2, body2) and len({key1, key3, key4}) == 3
    import hashlib
    import hmac

    from orchestration.segments.destinations import sign

    assert sign(SECRET, body1) == "sha256=" + hmac.new(SECRET.encode(), body1, hashlib.sha256).hexdigest()
    assert json.loads(body1)["idempotency_key"] == key1


def test_a_missing_secret_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("TEST_WEBHOOK_SECRET", raising=False)
    with pytest.raises(DestinationUnavailable, match="TEST_WEBHOOK_SECRET"):
        client_for(_webhook("https://example.com/hook"))


@pytest.mark.parametrize(
    ("table", "words"),
    [
        ({"type": "ftp"}, "type must be one of"),
        ({"type": "webhook", "url": "http://example.com/x", "secret_env": "S", "segments": ["buyers"]}, "https://"),
        ({"type": "webhook", "url": "https://x.example", "secret_env": "my secret", "segments": ["buyers"]}, "secret_env"),
        ({"type": "webhook", "url": "https://x.example", "secret_env": "S", "segments": ["nope"]}, "unknown segment(s) 'nope'"),
        ({"type": "webhook", "url": "https://x.example", "secret_env": "S", "segments": ["buyers"], "mode": "replace"}, "mode must be"),
        ({"type": "wecom", "tags": {}}, "tags must be"),
        ({"type": "wecom", "tags": {"buyers": "et1"}, "corp_secret": "plain"}, "unknown field(s) corp_secret"),
    ],
)
def test_destination_config_errors_name_the_destination(table, words):
    with pytest.raises(DestinationConfigError) as info:
        parse_destinations({"crm": table}, ["buyers"])
    assert "destination 'crm'" in str(info.value) and words in str(info.value)


@pytest.mark.parametrize(("key", "bad", "edge", "words"), [
    # max_attempts 0 is no number of tries (tenacity quietly makes it one, so retries the user asked for never happen)
    ("max_attempts", 0, 1, "max_attempts must be a whole number from 1 to 20"),
    ("max_attempts", 21, 20, "max_attempts must be a whole number from 1 to 20"),
    ("batch_size", 10_001, 10_000, "batch_size must be a whole number from 1 to 10000"),
    # a timeout of a day would hold the run (and the warehouse) for that long on one dead receiver
    ("timeout_seconds", 3601, 3600, "timeout_seconds must be a number of seconds from 0 to 3600"),
    ("max_backoff_seconds", -1, 0, "max_backoff_seconds must be a number of seconds from 0 to 3600"),
])
def test_destination_numbers_just_outside_their_range_are_refused_and_the_edge_loads(key, bad, edge, words):
    table = {"type": "webhook", "url": "https://x.example", "secret_env": "S", "segments": ["buyers"]}
    with pytest.raises(DestinationConfigError) as info:
        parse_destinations({"crm": {**table, key: bad}}, ["buyers"])
    assert "destination 'crm'" in str(info.value) and words in str(info.value)
    (config,) = parse_destinations({"crm": {**table, key: edge}}, ["buyers"])
    assert getattr(config, key) == edge


# --------------------------------------------------------------------------------------------------- WeCom


class WeComServer(LocalHTTPServer):
    """gettoken and externalcontact/mark_tag as WeCom's API documents them, answering from a script of errcodes."""

    def __init__(self, script: list[int], token_expires_in: int = 7200, max_tokens: int | None = None):
        self.script = list(script)
        self.token_expires_in = token_expires_in
        self.max_tokens = max_tokens  # gettoken refuses (40001) once this many were issued
        self.tokens_issued = 0
        self.valid_tokens: set[str] = set()
        self.calls: list[dict] = []
        self.tags: dict[str, set[str]] = {}  # external_userid -> tag ids it carries
        self.lock = threading.Lock()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _answer(self, body):
                data = json.dumps(body).encode()
                self.send_response(200)  # WeCom answers 200 and reports errors in errcode
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                url = urlsplit(self.path)
                q = parse_qs(url.query)
                if url.path != "/cgi-bin/gettoken" or q.get("corpid") != ["ww-corp"] or q.get("corpsecret") != ["corp-secret"] \
                        or (outer.max_tokens is not None and outer.tokens_issued >= outer.max_tokens):
                    return self._answer({"errcode": 40001, "errmsg": "invalid credential"})
                with outer.lock:
                    outer.tokens_issued += 1
                    token = f"T{outer.tokens_issued}"
                    outer.valid_tokens = {token}
                return self._answer({"errcode": 0, "errmsg": "ok", "access_token": token, "expires_in": outer.token_expires_in})

            def do_POST(self):
                url = urlsplit(self.path)
                token = parse_qs(url.query).get("access_token", [""])[0]
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                with outer.lock:
                    code = outer.script.pop(0) if outer.script else 0
                    outer.calls.append({"token": token, "body": body, "scripted": code})
                    if code == 0 and token not in outer.valid_tokens:
                        code = 42001
                    if code == 0:
                        tags = outer.tags.setdefault(body["external_userid"], set())
                        tags.update(body.get("add_tag", []))
                        tags.difference_update(body.get("remove_tag", []))
                messages = {0: "ok", 45009: "api freq out of limit", -1: "system busy", 42001: "access_token expired", 40014: "invalid access_token", 40003: "invalid external_userid"}
                return self._answer({"errcode": code, "errmsg": messages.get(code, "error")})

        self._serve(Handler)


def _wecom(base_url, **over):
    table = {"type": "wecom", "base_url": base_url, "tags": {"buyers": "etBUYERS"}, "max_attempts": 4, "backoff_seconds": 0.01,
             "corp_id_env": "TEST_WECOM_CORP_ID", "corp_secret_env": "TEST_WECOM_SECRET"}
    table.update(over)
    (config,) = parse_destinations({"crm": table}, ["buyers"])
    return config


def test_wecom_tags_only_live_contacts(warehouse):
    """A customer who removed the WeCom contact (or whose id was only seen on an event) keeps the id in
    dim_customers but is no WeCom contact: no mark_tag is sent for it (it would only fail), the row is skipped."""
    _sql(warehouse, "update marts.dim_customers set reachable_channels = 'official_account' where customer_key = 'C7'")
    with WeComServer([0] * 6) as server:
        config = _wecom(server.url)
        report = _sync(warehouse, config, WeComClient(config, "ww-corp", "corp-secret", sleep=lambda s: None), "run-1")
        assert "wmC7" not in {c["body"]["external_userid"] for c in server.calls}
    log = {r[0]: r[2:5] for r in _log(warehouse, "run-1")}
    assert log["C7"][0] == "skipped" and "live WeCom contact" in log["C7"][1]
    assert (report.accepted, report.skipped) == (6, 1)


def test_wecom_never_tags_through_an_id_that_is_not_the_members_handle(warehouse):
    """A review found members labelled `wecom` whose handle was an openid seen on a WeCom event, beside the id of a
    contact they had removed, and the sync tagging that contact. Membership labels such an openid `openid` now; the
    sync also refuses a `wecom` row whose handle is not its WeCom id (as a membership built before wrote it)."""
    _sql(warehouse, "update marts.dim_customers set reachable_channels = 'community_group', openid = 'oC7', "
                    "openid_channel = 'wecom' where customer_key = 'C7'")
    assert query(warehouse, "select contact_channel, contact_handle from segments.segment_members where customer_key = 'C7'") == [("openid", "oC7")]
    con = connect(warehouse)
    try:  # the row as the membership of an earlier version wrote it
        con.execute("update segments.segment_members set contact_channel = 'wecom' where customer_key = 'C7'")
    finally:
        con.close()
    with WeComServer([0] * 6) as server:
        config = _wecom(server.url)
        report = _sync(warehouse, config, WeComClient(config, "ww-corp", "corp-secret", sleep=lambda s: None), "run-1")
        assert "wmC7" not in {c["body"]["external_userid"] for c in server.calls}
    log = {r[0]: r[2:5] for r in _log(warehouse, "run-1")}
    assert log["C7"][0] == "skipped" and (report.accepted, report.skipped) == (6, 1)


def test_wecom_tags_with_rate_limits_busy_expired_token_and_a_bad_contact(warehouse):
    _sql(warehouse, "update marts.dim_customers set wecom_external_userid = null where customer_key = 'C7'")  # no WeCom contact
    # C1: rate limited, then ok. C2: busy, then ok. C3: token expired -> refresh -> ok. C4: invalid contact. C5, C6 ok.
    script = [45009, 0, -1, 0, 42001, 0, 40003, 0, 0]
    with WeComServer(script) as server:
        config = _wecom(server.url)
        client = WeComClient(config, "ww-corp", "corp-secret", sleep=lambda s: None)
        report = _sync(warehouse, config, client, "run-1")
        assert server.tokens_issued == 2  # cached, refreshed once after 42001
        assert all(c["token"] == "T1" for c in server.calls[:5]) and all(c["token"] == "T2" for c in server.calls[5:])
        assert server.calls[0]["body"] == {"userid": "staff1", "external_userid": "wmC1", "add_tag": ["etBUYERS"]}
        assert {k for k, v in server.tags.items() if "etBUYERS" in v} == {"wmC1", "wmC2", "wmC3", "wmC5", "wmC6"}
        log = {r[0]: r[2:5] for r in _log(warehouse, "run-1")}
        assert log["C1"] == ("accepted", None, 2) and log["C3"] == ("accepted", None, 2)
        assert log["C4"] == ("failed", "errcode 40003: invalid external_userid", 1)
        assert log["C7"][0] == "skipped" and "no WeCom contact" in log["C7"][1]
        assert (report.accepted, report.failed, report.skipped) == (5, 1, 1)
        assert _state(warehouse) == {"C1", "C2", "C3", "C5", "C6"}
        # next sync: only C4 is re-sent (C7 still has no contact); C1 leaves the segment: remove_tag
        _sql(warehouse, "update marts.dim_customers set paid_orders = 0 where customer_key = 'C1'")
        calls_before = len(server.calls)
        report = _sync(warehouse, config, client, "run-2")
        sent = server.calls[calls_before:]
        assert [c["body"] for c in sent] == [
            {"userid": "staff1", "external_userid": "wmC1", "remove_tag": ["etBUYERS"]},
            {"userid": "staff1", "external_userid": "wmC4", "add_tag": ["etBUYERS"]},
        ]
        assert "etBUYERS" not in server.tags["wmC1"] and "etBUYERS" in server.tags["wmC4"]
        assert server.tokens_issued == 2
        assert _state(warehouse) == {"C2", "C3", "C4", "C5", "C6"}
        calls_before = len(server.calls)
        _sync(warehouse, config, client, "run-3")
        assert len(server.calls) == calls_before


def test_wecom_token_is_cached_until_it_expires():
    now = [1000.0]
    with WeComServer([]) as server:
        client = WeComClient(_wecom(server.url), "ww-corp", "corp-secret", sleep=lambda s: None, clock=lambda: now[0])
        assert client.token() == "T1" and client.token() == "T1"
        now[0] += 7200 - client.TOKEN_MARGIN_SECONDS - 1
        assert client.token() == "T1"
        now[0] += 2
        assert client.token() == "T2" and server.tokens_issued == 2


def test_wecom_refused_credentials_stop_the_sync_and_nothing_counts_as_delivered(warehouse):
    with WeComServer([]) as server:
        config = _wecom(server.url)
        report = _sync(warehouse, config, WeComClient(config, "ww-corp", "wrong", sleep=lambda s: None), "run-1")
        assert server.calls == []
    assert report.accepted == 0 and report.failed == 7 and "gettoken refused: errcode 40001" in report.error
    assert _state(warehouse) == set()


def _pending(path):
    return {r[0] for r in query(path, "select customer_key from segments.sync_pending where destination = 'crm' and segment = 'buyers'")}


def test_an_add_sent_without_an_answer_is_removed_when_its_customer_opts_out(warehouse):
    """The receiver applies C1's add but answers too late, every time: the sync gives up (C1 failed, not in the
    state). C1 then opts out: even in additive mode the next sync removes C1, since the receiver may hold it."""
    _sql(warehouse, "update marts.dim_customers set paid_orders = 0 where customer_key <> 'C1'")
    with ScriptedServer(["timeout"] * 4, SECRET, sleep_seconds=1.0) as server:
        config = _webhook(server.url + "/hook", mode="additive", batch_size=10)
        client = WebhookClient(config, SECRET, sleep=lambda s: None)
        first = _sync(warehouse, config, client, "run-1")
        assert (first.accepted, first.failed) == (0, 1) and server.members == {"C1": 1}
        assert _state(warehouse) == set() and _pending(warehouse) == {"C1"}
        _sql(warehouse, "update marts.dim_customers set opted_out = true, is_reachable = false where customer_key = 'C1'")
        second = _sync(warehouse, config, client, "run-2")
        assert (second.to_add, second.to_remove, second.accepted) == (0, 1, 1) and server.removed == {"C1": 1}
        assert _pending(warehouse) == set() and _sync(warehouse, config, client, "run-3").requests == 0


def test_an_add_whose_sync_died_before_recording_it_is_still_removed(warehouse):
    """The process dies between the receiver's answer and the sync's record of it (here: the client raises after
    sending). The add stays pending; when C1 leaves the segment (mirror), the next sync removes C1."""
    _sql(warehouse, "update marts.dim_customers set paid_orders = 0 where customer_key <> 'C1'")
    with ScriptedServer([], SECRET) as server:
        config = _webhook(server.url + "/hook", batch_size=10)

        class DiesAfterSending(WebhookClient):
            def send(self, *args, **kwargs):
                super().send(*args, **kwargs)
                raise SystemExit("killed")

        with pytest.raises(SystemExit):
            _sync(warehouse, config, DiesAfterSending(config, SECRET, sleep=lambda s: None), "run-1")
        assert server.members == {"C1": 1} and _state(warehouse) == set() and _pending(warehouse) == {"C1"}
        _sql(warehouse, "update marts.dim_customers set paid_orders = 0 where customer_key = 'C1'")
        report = _sync(warehouse, config, WebhookClient(config, SECRET, sleep=lambda s: None), "run-2")
        assert (report.to_remove, report.accepted) == (1, 1) and server.removed == {"C1": 1}
        assert _pending(warehouse) == set()


def test_a_pending_row_stays_until_a_remove_of_it_is_accepted(warehouse):
    """A receiver refuses C1's add (listed as rejected), and then, after C1 opts out, the remove too (its answer
    says nothing about whether it holds C1: a rotated secret or a proxy answers the same way). C1 stays pending
    and the remove is sent again by every sync until the receiver accepts it."""
    _sql(warehouse, "update marts.dim_customers set paid_orders = 0 where customer_key <> 'C1'")
    with ScriptedServer(["reject:C1"], SECRET) as server:
        config = _webhook(server.url + "/hook", mode="additive", batch_size=10)
        client = WebhookClient(config, SECRET, sleep=lambda s: None)
        assert _sync(warehouse, config, client, "run-1").failed == 1 and _pending(warehouse) == {"C1"}
        _sql(warehouse, "update marts.dim_customers set opted_out = true, is_reachable = false where customer_key = 'C1'")
        server.script = ["reject:C1"]
        report = _sync(warehouse, config, client, "run-2")
        assert (report.to_remove, report.failed) == (1, 1) and _pending(warehouse) == {"C1"}
        report = _sync(warehouse, config, client, "run-3")
        assert (report.to_remove, report.accepted) == (1, 1) and server.removed == {"C1": 1}
        assert _pending(warehouse) == set() and _sync(warehouse, config, client, "run-4").requests == 0


def test_a_webhook_that_refuses_the_credentials_stops_the_sync(warehouse):
    """Every row of a batch answered 401/403 (a rotated secret): the destination cannot be used this sync, so
    nothing more is sent and the sync reports the error (its Dagster step fails)."""
    with ScriptedServer([], "another-secret") as server:
        config = _webhook(server.url + "/hook", batch_size=2)
        report = _sync(warehouse, config, WebhookClient(config, SECRET, sleep=lambda s: None), "run-1")
    assert len(server.requests) == 1 and report.accepted == 0 and report.failed == 7
    assert "destination refused the request" in report.error and "HTTP 401" in report.error
    assert _state(warehouse) == set()


def test_wecom_rows_tagged_before_the_token_is_refused_count_as_accepted(warehouse):
    """mark_tag accepts C1 and C2, then says the token expired, and gettoken refuses a new one: C1 and C2 are
    accepted (WeCom tagged them), the other rows are not sent, and the sync says why."""
    with WeComServer([0, 0, 42001], max_tokens=1) as server:
        config = _wecom(server.url)
        report = _sync(warehouse, config, WeComClient(config, "ww-corp", "corp-secret", sleep=lambda s: None), "run-1")
    assert {k for k, v in server.tags.items() if "etBUYERS" in v} == {"wmC1", "wmC2"}
    log = {r[0]: r[2:5] for r in _log(warehouse, "run-1")}
    assert log["C1"] == ("accepted", None, 1) and log["C2"] == ("accepted", None, 1)
    assert all(log[f"C{i}"][0] == "failed" and log[f"C{i}"][1].startswith("not sent") for i in range(3, 8))
    assert _state(warehouse) == {"C1", "C2"} and (report.accepted, report.failed) == (2, 5)
    assert "gettoken refused: errcode 40001" in report.error


def test_wecom_merge_keeps_the_tag_of_the_contact_the_surviving_customer_inherits(warehouse):
    """C1 (wmC1) is tagged. C1 merges into C9, which inherits wmC1: no remove_tag (it would untag the surviving
    member); the state row passes to C9, whose contact is tagged already. In additive mode the same holds for a
    survivor that is not a member but reachable (additive mode keeps it)."""
    with WeComServer([]) as server:
        config = _wecom(server.url)
        client = WeComClient(config, "ww-corp", "corp-secret", sleep=lambda s: None)
        _sync(warehouse, config, client, "run-1")
        _sql(warehouse, "update marts.dim_customers set customer_key = 'C9' where customer_key = 'C1'")
        before = len(server.calls)
        report = _sync(warehouse, config, client, "run-2")
        assert server.calls[before:] == []  # the contact is tagged already: its state row passes to C9
        assert "etBUYERS" in server.tags["wmC1"] and report.skipped == 1
        log = {r[0]: r[1:4] for r in _log(warehouse, "run-2")}
        assert log == {"C1": ("remove", "skipped", "merged into C9, who holds contact wmC1: the tag stays")}
        assert _state(warehouse) == {"C9", *(f"C{i}" for i in range(2, 8))}
        # C9 leaves the segment later: then the contact is untagged
        _sql(warehouse, "update marts.dim_customers set paid_orders = 0 where customer_key = 'C9'")
        _sync(warehouse, config, client, "run-3")
        assert "etBUYERS" not in server.tags["wmC1"]


def test_a_changed_wecom_tag_id_moves_every_contact_to_the_new_tag(warehouse):
    with WeComServer([]) as server:
        old = _wecom(server.url)
        client = WeComClient(old, "ww-corp", "corp-secret", sleep=lambda s: None)
        _sync(warehouse, old, client, "run-1")
        new = _wecom(server.url, tags={"buyers": "etNEW"})
        # wmC3's removal from the old tag fails (a contact WeCom refuses): it stays at the old tag until it works
        server.script = [0, 0, 40003]
        report = _sync(warehouse, new, WeComClient(new, "ww-corp", "corp-secret", sleep=lambda s: None), "run-2")
        assert (report.to_remove, report.to_add) == (7, 6)
        tagged = {k: v for k, v in server.tags.items() if v}
        assert tagged == {"wmC3": {"etBUYERS"}, **{f"wmC{i}": {"etNEW"} for i in (1, 2, 4, 5, 6, 7)}}
        rows = query(warehouse, "select customer_key, target from segments.sync_state order by 1")
        assert rows == [("C1", "etNEW"), ("C2", "etNEW"), ("C3", "etBUYERS"), *((f"C{i}", "etNEW") for i in range(4, 8))]
        report = _sync(warehouse, new, WeComClient(new, "ww-corp", "corp-secret", sleep=lambda s: None), "run-3")
        assert (report.to_remove, report.to_add, report.accepted) == (1, 1, 2)
        assert server.tags["wmC3"] == {"etNEW"}


def test_a_destination_that_cannot_be_used_fails_its_dagster_step(warehouse, tmp_path, monkeypatch):
    """A refused gettoken is not a sync: the step fails, saying why, instead of a green materialization."""
    import dagster as dg

    from orchestration.defs.exports import build_sync_asset
    from orchestration.defs.resources import PrivdomResource

    monkeypatch.setenv("TEST_WECOM_CORP_ID", "ww-corp")
    monkeypatch.setenv("TEST_WECOM_SECRET", "wrong")
    with WeComServer([]) as server:
        asset = build_sync_asset(_wecom(server.url), _defs())
        with dg.DagsterInstance.ephemeral() as instance:
            result = dg.materialize([asset], instance=instance, raise_on_error=False,
                                    resources={"privdom": PrivdomResource(data_dir=str(warehouse.parent))})
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert "sync to crm stopped" in failure.event_specific_data.error.message or \
        "sync to crm stopped" in str(failure.event_specific_data.user_failure_data.description)
    assert result.get_asset_materialization_events() == []
    (check,) = result.get_asset_check_evaluations()
    assert check.check_name == "all_rows_accepted" and not check.passed and check.description.startswith("7 rows not accepted")
    assert query(warehouse, "select count(*) from segments.sync_log where status = 'failed'") == [(7,)]


def test_the_run_summary_lists_each_sync_the_run_made_with_its_rows(warehouse, tmp_path, monkeypatch):
    """A sync that succeeded is in `privdom run`'s summary too (it said nothing of one), with the rows it failed."""
    import dagster as dg

    from orchestration.defs.exports import build_sync_asset
    from orchestration.defs.resources import PrivdomResource
    from orchestration.runner import PipelineResult, synced
    from orchestration.settings import load_settings

    monkeypatch.setenv("TEST_WEBHOOK_SECRET", SECRET)
    # 7 members in batches of 2: the receiver takes every row but C3
    with ScriptedServer(["ok", "reject:C3"], SECRET) as server:
        asset = build_sync_asset(_webhook(server.url + "/hook"), _defs())
        with dg.DagsterInstance.ephemeral() as instance:
            result = dg.materialize([asset], instance=instance, raise_on_error=False,
                                    resources={"privdom": PrivdomResource(data_dir=str(warehouse.parent))})
    assert result.success
    assert synced(result.all_events) == [("crm", 6, 1, 0)]
    text = PipelineResult(load_settings(tmp_path / "data"), "0123456789abcdef", True, 1.0,
                          syncs=synced(result.all_events)).describe()
    assert "syncs this run" in text
    assert [line.split() for line in text.splitlines() if line.strip().startswith("crm ")] == [["crm", "6", "1", "0"]]
    # a run without syncs prints no such section
    assert "syncs this run" not in PipelineResult(load_settings(tmp_path / "data"), "0123456789abcdef", True, 1.0).describe()


def test_wecom_an_opted_out_customer_is_untagged_even_if_a_member_shares_the_contact(warehouse):
    """Only a key merged away leaves its contact's tag to a member: a customer who still exists and opts out is
    untagged, whoever else carries the same contact (two customers the identity graph kept apart)."""
    with WeComServer([]) as server:
        config = _wecom(server.url)
        client = WeComClient(config, "ww-corp", "corp-secret", sleep=lambda s: None)
        _sync(warehouse, config, client, "run-1")
        _sql(warehouse, "update marts.dim_customers set wecom_external_userid = 'wmC1' where customer_key = 'C2'")
        _sql(warehouse, "update marts.dim_customers set opted_out = true, is_reachable = false where customer_key = 'C1'")
        before = len(server.calls)
        _sync(warehouse, config, client, "run-2")
        assert {"userid": "staff1", "external_userid": "wmC1", "remove_tag": ["etBUYERS"]} in [c["body"] for c in server.calls[before:]]
        assert [r[1:3] for r in _log(warehouse, "run-2") if r[0] == "C1"] == [("remove", "accepted")]


def test_a_member_whose_contact_changed_is_sent_again(warehouse):
    """Webhook: an add is an upsert, so a member reached on a new contact is sent again with it. WeCom: mark_tag
    tags the relationship of one staff member with one contact, so a new contact or a new owning staff member
    is untagged through the old relationship, then tagged through the new one."""
    with ScriptedServer([], SECRET) as server:
        config = _webhook(server.url + "/hook", batch_size=10)
        client = WebhookClient(config, SECRET, sleep=lambda s: None)
        _sync(warehouse, config, client, "run-1")
        _sql(warehouse, "update marts.dim_customers set wecom_external_userid = 'wmC1new' where customer_key = 'C1'")
        report = _sync(warehouse, config, client, "run-2")
        assert (report.to_add, report.to_remove, report.accepted) == (1, 0, 1)
        assert server.requests[-1]["rows"] == ["C1"] and server.members["C1"] == 2
        assert query(warehouse, "select contact_handle from segments.sync_state where customer_key = 'C1'") == [("wmC1new",)]
        assert _sync(warehouse, config, client, "run-3").requests == 0
    _sql(warehouse, "update marts.dim_customers set wecom_external_userid = 'wmC1' where customer_key = 'C1'")
    _sql(warehouse, "delete from segments.sync_state")  # the same destination name, now a WeCom one, from scratch
    with WeComServer([]) as server:
        config = _wecom(server.url)
        client = WeComClient(config, "ww-corp", "corp-secret", sleep=lambda s: None)
        assert _sync(warehouse, config, client, "run-4").accepted == 7
        _sql(warehouse, "update marts.dim_customers set wecom_external_userid = 'wmC1new' where customer_key = 'C1'")
        _sql(warehouse, "update marts.dim_customers set wecom_staff_userid = 'staff2' where customer_key = 'C2'")
        before = len(server.calls)
        report = _sync(warehouse, config, client, "run-5")
        assert [c["body"] for c in server.calls[before:]] == [  # a tag is on a staff member's relationship
            {"userid": "staff1", "external_userid": "wmC1", "remove_tag": ["etBUYERS"]},
            {"userid": "staff1", "external_userid": "wmC2", "remove_tag": ["etBUYERS"]},
            {"userid": "staff1", "external_userid": "wmC1new", "add_tag": ["etBUYERS"]},
            {"userid": "staff2", "external_userid": "wmC2", "add_tag": ["etBUYERS"]},
        ]
        assert (report.to_remove, report.to_add, report.accepted) == (2, 2, 4)
        assert "etBUYERS" not in server.tags["wmC1"] and "etBUYERS" in server.tags["wmC1new"]
        assert query(warehouse, "select customer_key, wecom_external_userid, wecom_staff_userid from segments.sync_state "
                                "where customer_key in ('C1', 'C2') order by 1") == [("C1", "wmC1new", "staff1"), ("C2", "wmC2", "staff2")]
        before = len(server.calls)
        _sync(warehouse, config, client, "run-6")
        assert len(server.calls) == before


def test_wecom_additive_merge_and_tag_change_keep_reachable_former_members(warehouse):
    """Additive mode keeps customers who left the segment while they are reachable. A merge into such a customer
    keeps the contact's tag (the state passes to the survivor); a new tag id moves the members, and a kept
    former member stays at the old tag, from which an opt-out still removes them."""
    with WeComServer([]) as server:
        config = _wecom(server.url, mode="additive")
        client = WeComClient(config, "ww-corp", "corp-secret", sleep=lambda s: None)
        _sync(warehouse, config, client, "run-1")
        _sql(warehouse, "update marts.dim_customers set paid_orders = 0 where customer_key = 'C3'")  # left, still reachable
        _sql(warehouse, "update marts.dim_customers set customer_key = 'C9', paid_orders = 0 where customer_key = 'C1'")  # merged, not a member
        before = len(server.calls)
        report = _sync(warehouse, config, client, "run-2")
        assert server.calls[before:] == [] and report.skipped == 1 and "etBUYERS" in server.tags["wmC1"]
        assert _state(warehouse) == {"C9", *(f"C{i}" for i in range(2, 8))}
        new = _wecom(server.url, mode="additive", tags={"buyers": "etNEW"})
        report = _sync(warehouse, new, WeComClient(new, "ww-corp", "corp-secret", sleep=lambda s: None), "run-3")
        assert (report.to_remove, report.to_add) == (5, 5)  # the members C2, C4-C7 move; C3 and C9 stay
        assert server.tags["wmC3"] == {"etBUYERS"} and server.tags["wmC1"] == {"etBUYERS"}
        assert all(server.tags[f"wmC{i}"] == {"etNEW"} for i in (2, 4, 5, 6, 7))
        _sql(warehouse, "update marts.dim_customers set opted_out = true, is_reachable = false where customer_key = 'C3'")
        before = len(server.calls)
        _sync(warehouse, new, WeComClient(new, "ww-corp", "corp-secret", sleep=lambda s: None), "run-4")
        assert [c["body"] for c in server.calls[before:]] == [{"userid": "staff1", "external_userid": "wmC3", "remove_tag": ["etBUYERS"]}]
        assert server.tags["wmC3"] == set()


def test_wecom_merge_of_an_unconfirmed_row_passes_it_on_as_pending(warehouse):
    """C1's add was refused (pending: not known to be tagged). C1 merges into C9, which inherits wmC1: the row
    passes to C9 as pending, not as accepted, so C9 is still tagged, and is accepted then."""
    _sql(warehouse, "update marts.dim_customers set paid_orders = 0 where customer_key <> 'C1'")
    with WeComServer([40003]) as server:
        config = _wecom(server.url)
        client = WeComClient(config, "ww-corp", "corp-secret", sleep=lambda s: None)
        assert _sync(warehouse, config, client, "run-1").failed == 1 and _pending(warehouse) == {"C1"}
        _sql(warehouse, "update marts.dim_customers set customer_key = 'C9' where customer_key = 'C1'")
        report = _sync(warehouse, config, client, "run-2")
        assert (report.skipped, report.accepted) == (1, 1) and server.tags["wmC1"] == {"etBUYERS"}
        assert _state(warehouse) == {"C9"} and _pending(warehouse) == set()


def test_a_remove_never_confirmed_is_followed_by_an_add_when_the_member_comes_back(warehouse):
    """The receiver applies C1's remove but its answer never arrives (every attempt times out): the destination
    may no longer hold C1. When C1 is a member again, it is sent as an add (idempotent at the receiver); before,
    sync_state still counted C1 as held and the receiver never got it back."""
    with ScriptedServer([], SECRET, sleep_seconds=0.8) as server:
        config = _webhook(server.url + "/hook", batch_size=10, max_attempts=2)
        client = WebhookClient(config, SECRET, sleep=lambda s: None)
        _sync(warehouse, config, client, "run-1")
        _sql(warehouse, "update marts.dim_customers set paid_orders = 0 where customer_key = 'C1'")
        server.script = ["timeout", "timeout"]
        report = _sync(warehouse, config, client, "run-2")
        assert (report.to_remove, report.accepted) == (1, 0) and server.removed == {"C1": 1}  # applied, not confirmed
        _sql(warehouse, "update marts.dim_customers set paid_orders = 1 where customer_key = 'C1'")
        report = _sync(warehouse, config, client, "run-3")
        assert (report.to_add, report.accepted) == (1, 1) and server.members["C1"] == 2
        assert _state(warehouse) == {f"C{i}" for i in range(1, 8)}
        assert _sync(warehouse, config, client, "run-4").requests == 0  # confirmed: nothing more to send


def test_a_2xx_answer_that_does_not_say_what_it_took_delivers_nothing():
    """A 2xx answer that is not JSON (a proxy's page) is retried, then the rows fail; one whose `rejected` names
    rows in another shape fails the batch; bare keys in `rejected` are taken; an empty body accepts the batch."""
    import httpx

    answers: list[httpx.Response] = []

    def handler(request: httpx.Request) -> httpx.Response:
        return answers.pop(0)

    config = _webhook("https://crm.example/hook")
    client = WebhookClient(config, SECRET, http=httpx.Client(transport=httpx.MockTransport(handler)), sleep=lambda s: None)
    rows = [{"customer_key": k, "contact_channel": None, "contact_handle": None, "phone_sha256": None} for k in ("C1", "C2")]
    html = httpx.Response(200, text="<html>maintenance</html>")
    answers[:] = [html] * config.max_attempts
    out = client.send("buyers", 1, "add", rows)
    assert [o.accepted for o in out] == [False, False] and "not JSON" in out[0].error and out[0].attempts == config.max_attempts
    answers[:] = [httpx.Response(200, text='{"rejected": [{"customer_key": "C2", "error": "nope"')] * config.max_attempts
    out = client.send("buyers", 1, "add", rows)  # cut short: not JSON either
    assert [o.accepted for o in out] == [False, False] and "not JSON" in out[0].error
    for odd in ([{"key": "C2"}], "C1,C2", "", {"customer_key": "C2"}, ["C3"]):  # not this batch's rows, or not a list
        answers[:] = [httpx.Response(200, json={"rejected": odd})]
        out = client.send("buyers", 1, "add", rows)
        assert [o.accepted for o in out] == [False, False] and "not a list of this batch's rows" in out[0].error, odd
    answers[:] = [httpx.Response(200, json={"rejected": ["C2"]})]
    assert [o.accepted for o in client.send("buyers", 1, "add", rows)] == [True, False]
    answers[:] = [httpx.Response(204)]
    assert [o.accepted for o in client.send("buyers", 1, "add", rows)] == [True, True]


def test_wecom_stops_after_a_few_contacts_in_a_row_give_up(warehouse):
    """WeCom rate limiting for good (45009 on every call): the sync stops after GIVE_UP_IN_A_ROW contacts gave up,
    not after every contact of a batch (one call per contact: hours at the default batch of 500)."""
    from orchestration.segments.destinations import GIVE_UP_IN_A_ROW

    with WeComServer([45009] * 1000) as server:
        config = _wecom(server.url, max_attempts=2)
        report = _sync(warehouse, config, WeComClient(config, "ww-corp", "corp-secret", sleep=lambda s: None), "run-1")
        assert len([c for c in server.calls]) == GIVE_UP_IN_A_ROW * 2
    assert report.error and "stopped sending" in report.error and report.accepted == 0
    log = {r[0]: r[2] for r in _log(warehouse, "run-1")}
    assert sorted(log.values()).count("failed") == 7  # C1-C3 gave up, C4-C7 not sent: all due next time


def test_wecom_merge_passes_on_a_remove_not_confirmed(warehouse):
    """C1's remove_tag was sent and never confirmed (every attempt 45009; here it took effect all the same), then
    C1 merged into C9, a member holding the same contact: the row passes to C9 still marked, so C9 is tagged
    again (a review found the mark lost in the move: nothing was ever sent and wmC1 stayed untagged)."""
    with WeComServer([]) as server:
        config = _wecom(server.url)
        client = WeComClient(config, "ww-corp", "corp-secret", sleep=lambda s: None)
        _sync(warehouse, config, client, "run-1")
        _sql(warehouse, "update marts.dim_customers set paid_orders = 0 where customer_key = 'C1'")
        server.script = [45009] * 4
        assert _sync(warehouse, config, client, "run-2").accepted == 0
        server.tags["wmC1"].discard("etBUYERS")  # the remove took effect; its answers never said so
        _sql(warehouse, "update marts.dim_customers set customer_key = 'C9', paid_orders = 1 where customer_key = 'C1'")
        _sync(warehouse, config, client, "run-3")
        assert "etBUYERS" in server.tags["wmC1"]
        assert _state(warehouse) == {"C9", *(f"C{i}" for i in range(2, 8))}


def test_wecom_a_member_without_a_live_contact_is_logged_skipped_once_while_it_lasts(warehouse):
    """C7 is a member but no WeCom contact: logged `skipped` by the sync it first became due in, not by every sync
    after it (at 1M customers that was hundreds of thousands of log rows a day per tagged segment); it counts in
    each sync's `skipped`. Logged again when it is due again after leaving the segment; tagged once it is a
    live contact, which ends its skip."""
    _sql(warehouse, "update marts.dim_customers set reachable_channels = 'official_account' where customer_key = 'C7'")

    def skipped_logged(run_id):
        return [r[0] for r in _log(warehouse, run_id) if r[2] == "skipped"]

    def skipped_counted(run_id):
        return query(warehouse, "select skipped from segments.sync_runs where sync_run_id = ?", [run_id])[0][0]

    with WeComServer([]) as server:
        config = _wecom(server.url)
        client = WeComClient(config, "ww-corp", "corp-secret", sleep=lambda s: None)
        assert _sync(warehouse, config, client, "run-1").skipped == 1 and skipped_logged("run-1") == ["C7"]
        assert _sync(warehouse, config, client, "run-2").skipped == 1 and skipped_logged("run-2") == []
        assert (skipped_counted("run-1"), skipped_counted("run-2")) == (1, 1)
        _sql(warehouse, "update marts.dim_customers set paid_orders = 0 where customer_key = 'C7'")  # leaves
        assert _sync(warehouse, config, client, "run-3").skipped == 0
        _sql(warehouse, "update marts.dim_customers set paid_orders = 1 where customer_key = 'C7'")  # back, still no contact
        assert _sync(warehouse, config, client, "run-4").skipped == 1 and skipped_logged("run-4") == ["C7"]
        _sql(warehouse, "update marts.dim_customers set reachable_channels = 'official_account,wecom' where customer_key = 'C7'")
        report = _sync(warehouse, config, client, "run-5")
        assert (report.accepted, report.skipped) == (1, 0) and "etBUYERS" in server.tags["wmC7"]
        assert query(warehouse, "select count(*) from segments.sync_skipped")[0][0] == 0
        assert len(server.calls) == 7 and "wmC7" not in {c["body"]["external_userid"] for c in server.calls[:6]}


def test_wecom_a_member_without_any_contact_channel_is_skipped_not_lost(warehouse):
    """A member reached by no channel now (contact_channel NULL) but holding a former WeCom id: `NOT (channel =
    'wecom' AND ...)` is NULL there, and a review found such a member neither sent nor skipped nor logged."""
    _sql(warehouse, "update marts.dim_customers set reachable_channels = 'member', is_member = true, openid = null, "
                    "phone_sha256 = null where customer_key = 'C7'")
    assert query(warehouse, "select contact_channel, wecom_external_userid from segments.segment_members where customer_key = 'C7'") == [(None, "wmC7")]
    with WeComServer([]) as server:
        config = _wecom(server.url)
        report = _sync(warehouse, config, WeComClient(config, "ww-corp", "corp-secret", sleep=lambda s: None), "run-1")
    assert (report.to_add, report.skipped) == (6, 1)
    assert [r[:3] for r in _log(warehouse, "run-1") if r[0] == "C7"] == [("C7", "add", "skipped")]


def test_wecom_an_expired_token_is_renewed_within_the_attempt(warehouse):
    """With max_attempts = 1, a token that expired early (42001, 40014) is fetched again and the same call made at
    once: the renewal is not a retry, so the contacts are tagged. A token refused again right after being issued
    is retried with backoff like any transient answer."""
    with WeComServer([0, 42001, 0, 40014, 0, 0, 0, 0]) as server:
        config = _wecom(server.url, max_attempts=1)
        report = _sync(warehouse, config, WeComClient(config, "ww-corp", "corp-secret", sleep=lambda s: None), "run-1")
        assert (report.accepted, report.failed, server.tokens_issued) == (7, 0, 3)
        log = {r[0]: r[2:5] for r in _log(warehouse, "run-1")}
        assert log["C2"] == ("accepted", None, 2) and log["C3"] == ("accepted", None, 2) and log["C4"] == ("accepted", None, 1)
    with WeComServer([42001, 42001, 42001, 42001, 0]) as server:
        config = _wecom(server.url, max_attempts=2)
        client = WeComClient(config, "ww-corp", "corp-secret", sleep=lambda s: None)
        ok, attempts, error = client.mark_tag("staff1", "wmC1", "etBUYERS", "add")
        assert (ok, attempts, server.tokens_issued) == (False, 4, 4) and "42001" in error
        assert client.mark_tag("staff1", "wmC1", "etBUYERS", "add") == (True, 1, None)


def test_retry_after_is_taken_in_seconds_or_as_an_http_date():
    """RFC 9110: Retry-After is delay-seconds or an HTTP-date; a date is measured against the answer's own Date
    header (the server's clock), else ours. A 429 asking for 2 s by date waits 2 s (capped by max_backoff_seconds)."""
    import httpx

    from orchestration.segments.destinations import _retry_after

    def wait_of(headers, now=dt.datetime(2026, 12, 6, 9, 0, 0, tzinfo=dt.UTC)):
        return _retry_after(httpx.Response(429, headers=headers), now=lambda: now)

    assert wait_of({"Retry-After": "7"}) == 7.0 and wait_of({"Retry-After": "-3"}) == 0.0
    assert wait_of({"Retry-After": "Sun, 06 Dec 2026 09:00:30 GMT"}) == 30.0  # against our clock
    assert wait_of({"Retry-After": "Sun, 06 Dec 2026 09:00:30 GMT", "Date": "Sun, 06 Dec 2026 09:00:25 GMT"}) == 5.0
    assert wait_of({"Retry-After": "Sun, 06 Dec 2026 08:59:00 GMT"}) == 0.0  # in the past: at once
    assert wait_of({"Retry-After": "soon"}) is None and wait_of({}) is None
    assert wait_of({"Retry-After": "Sun, 06 Dec 2026 09:00:30"}) is None  # no zone: not an HTTP-date

    answers = [httpx.Response(429, headers={"Retry-After": "Sun, 06 Dec 2026 09:00:02 GMT", "Date": "Sun, 06 Dec 2026 09:00:00 GMT"}),
               httpx.Response(429, headers={"Retry-After": "Sun, 06 Dec 2026 10:00:00 GMT", "Date": "Sun, 06 Dec 2026 09:00:00 GMT"}),
               httpx.Response(200)]
    slept: list[float] = []
    config = _webhook("https://crm.example/hook", max_backoff_seconds=60)
    client = WebhookClient(config, SECRET, http=httpx.Client(transport=httpx.MockTransport(lambda r: answers.pop(0))), sleep=slept.append)
    out = client.send("buyers", 1, "add", [{"customer_key": "C1", "contact_channel": None, "contact_handle": None, "phone_sha256": None}])
    assert out[0].accepted and slept == [2.0, 60.0]


def test_an_answer_that_echoes_credentials_never_puts_them_in_an_error():
    """WeCom puts the access token and the corp secret in the query string; a proxy's or a gateway's error page
    that echoes the URL put the corp secret into the run summary, sync_log, the BI copy and Dagster's event log
    (the privacy review). Every error a client reports is redacted: the secret, the corp id, every token fetched,
    a webhook URL's query values and any credential-named query parameter."""
    import httpx

    corp_secret, token = "CORPSECRETPLANT99", "TOKENPLANT12345"

    def echo(request: httpx.Request, status: int) -> httpx.Response:
        return httpx.Response(status, text=f"<html>upstream refused {request.url} (secret {corp_secret}) sig=abc&x=1</html>")

    def refuse_token(request: httpx.Request) -> httpx.Response:
        return echo(request, 403)

    config = _wecom("https://wecom.example", max_attempts=1)
    client = WeComClient(config, "wwPLANTCORP", corp_secret, http=httpx.Client(transport=httpx.MockTransport(refuse_token)),
                         sleep=lambda s: None)
    member = {"customer_key": "C1", "wecom_staff_userid": "staff", "wecom_external_userid": "wmC1", "target": None}
    with pytest.raises(DestinationUnavailable) as refused:
        client.send("buyers", 1, "add", [member])
    message = str(refused.value)
    assert "gettoken failed: HTTP 403" in message and "corpsecret=***" in message and "sig=***" in message, message
    assert corp_secret not in message and "wwPLANTCORP" not in message

    def tag_refused(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/gettoken"):
            return httpx.Response(200, json={"errcode": 0, "access_token": token, "expires_in": 7200})
        return httpx.Response(400, text=f"bad request for token {token} at {request.url.path}?access_token={token}")

    client = WeComClient(config, "wwPLANTCORP", corp_secret, http=httpx.Client(transport=httpx.MockTransport(tag_refused)),
                         sleep=lambda s: None)
    (outcome,) = client.send("buyers", 1, "add", [member])
    assert not outcome.accepted and outcome.error.startswith("HTTP 400: bad request for token ***"), outcome.error
    assert token not in outcome.error

    hook = _webhook("https://crm.example/hook?apikey=APIKEYPLANT77&team=growth&format=json")

    def hook_refused(request: httpx.Request) -> httpx.Response:
        return httpx.Response(401, text=f"no: {request.url} signed {request.headers['X-Privdom-Signature']} with {SECRET}")

    webhook = WebhookClient(hook, SECRET, http=httpx.Client(transport=httpx.MockTransport(hook_refused)), sleep=lambda s: None)
    (outcome,) = webhook.send("buyers", 1, "add", [{"customer_key": "C1", "contact_channel": None, "contact_handle": None,
                                                   "phone_sha256": None}])
    assert outcome.error.startswith("HTTP 401: no: https://crm.example/hook?apikey=***&team=growth&format=json"), outcome.error
    assert "APIKEYPLANT77" not in outcome.error and SECRET not in outcome.error


def test_redact_finds_credentials_in_every_form_and_leaves_other_words():
    """The diff review found forms the first pattern missed (a prefixed name, URL-encoded, JSON, a header) and
    words it took away (every query value of the webhook's URL, wherever they appeared)."""
    from orchestration.segments.destinations import redact

    cases = {
        "client_secret=CS1&refresh_token=RT1&x_api_key=XK1&n=2": "client_secret=***&refresh_token=***&x_api_key=***&n=2",
        "redirect=https%3A%2F%2Fa%2Fb%3Faccess_token%3DAT1%26corpsecret%3DCS2%26x%3D1": "redirect=https%3A%2F%2Fa%2Fb%3Faccess_token%3D***%26corpsecret%3D***%26x%3D1",
        '{"errmsg": "bad", "access_token": "AT2", "refresh_token":"RT2"}': '{"errmsg": "bad", "access_token": "***", "refresh_token":"***"}',
        "Authorization: Bearer eyJhbGciOi.J9.x-y_z": "Authorization: Bearer ***",
        "product json not found for team growth": "product json not found for team growth",
        "monitoring=on&design=blue": "monitoring=on&design=blue",
    }
    for text, expected in cases.items():
        assert redact(text) == expected, text
    assert redact("the secret s3cretvalue leaked", ["s3cretvalue"]) == "the secret *** leaked"


def test_a_segment_no_longer_synced_still_loses_its_opted_out_and_unreachable_customers(warehouse):
    """Marketer review: a segment renamed, deleted or taken out of a destination's `segments` left its customers
    held there for good, opted-out ones included. Such customers are removed all the same (SPEC §5), with their
    reason; the others stay, nothing is added, and the tag a WeCom row is held at is the one untagged."""
    with ScriptedServer([], SECRET) as server:
        config = _webhook(server.url + "/hook", batch_size=10)
        client = WebhookClient(config, SECRET, sleep=lambda s: None)
        _sync(warehouse, config, client, "run-1")
        _sql(warehouse, "update marts.dim_customers set opted_out = true, is_reachable = false where customer_key = 'C2'")
        _sql(warehouse, "update marts.dim_customers set is_reachable = false where customer_key = 'C3'")
        _sql(warehouse, "update marts.dim_customers set paid_orders = 0 where customer_key = 'C4'")  # left: stays held
        _sql(warehouse, "update marts.dim_customers set paid_orders = 1 where customer_key = 'N1'")  # joined: not added
        _sql(warehouse, "delete from marts.dim_customers where customer_key = 'C6'")  # erased (docs/privacy.md)
        con = connect(warehouse)
        try:
            report = sync_segment(con, config, client, "buyers", 1, sync_run_id="retired-1", no_longer_synced=True)
        finally:
            con.close()
        assert (report.to_remove, report.to_add, report.accepted) == (3, 0, 3)
        assert server.removed == {"C2": 1, "C3": 1, "C6": 1}
        assert server.remove_reasons == {"C2": "opted_out", "C3": "unreachable", "C6": "no_longer_a_customer"}
        assert "N1" not in server.members
        assert _state(warehouse) == {"C1", "C4", "C5", "C7"}


def test_a_wecom_segment_no_longer_synced_untags_an_opted_out_customer_at_the_tag_it_holds(warehouse):
    with WeComServer([0] * 20) as server:
        config = _wecom(server.url)
        client = WeComClient(config, "ww-corp", "corp-secret", sleep=lambda s: None)
        _sync(warehouse, config, client, "w-1")
        _sql(warehouse, "update marts.dim_customers set opted_out = true, is_reachable = false where customer_key = 'C5'")
        retired = _wecom(server.url, tags={"buyers": "etNEWTAG"})  # its tag since changed: the held one is untagged
        con = connect(warehouse)
        try:
            report = sync_segment(con, retired, WeComClient(retired, "ww-corp", "corp-secret", sleep=lambda s: None),
                                  "buyers", 1, sync_run_id="w-retired", no_longer_synced=True)
        finally:
            con.close()
        assert report.accepted == 1
        (untag,) = [c["body"] for c in server.calls if "remove_tag" in c["body"]]
        assert untag["external_userid"] == "wmC5" and untag["remove_tag"] == ["etBUYERS"]
