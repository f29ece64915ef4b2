"""Hand-written marts.dim_customers rows for the segment tests (no dbt needed), and a scripted HTTP server."""

from __future__ import annotations

import datetime as dt
import hashlib
import http.server
import json
import socket
import threading
import time
from collections.abc import Iterable
from pathlib import Path

import duckdb

from orchestration.warehouse import connect

SHANGHAI = dt.timezone(dt.timedelta(hours=8))
DATA_END = dt.datetime(2024, 6, 30, 12, 0, tzinfo=SHANGHAI)

DIM_DDL = """
create schema if not exists marts;
create or replace table marts.dim_customers (
    customer_key varchar, openid varchar, openid_channel varchar, unionid varchar,
    wecom_external_userid varchar, wecom_staff_userid varchar, member_id varchar,
    phone_masked varchar, phone_sha256 varchar,
    acquired_at timestamptz, acquisition_channel varchar, acquisition_referrer_key varchar,
    acquisition_campaign varchar, first_paid_at timestamptz, first_paid_order_id varchar,
    last_paid_at timestamptz, paid_orders bigint, net_revenue decimal(18, 2), points_redeemed hugeint,
    is_reachable boolean, reachable_channels varchar, opted_out boolean, is_member boolean,
    is_activated boolean, is_retained boolean, is_repurchased boolean, is_referrer boolean,
    customers_referred bigint, last_activity_at timestamptz, referrals_converted bigint,
    referrals_converted_12m hugeint, r_score integer, f_score integer, m_score integer,
    rfm_segment varchar, lifecycle_stage varchar, data_end_at timestamptz
);
"""
COLUMN_ORDER = [
    "customer_key", "openid", "openid_channel", "unionid", "wecom_external_userid", "wecom_staff_userid", "member_id",
    "phone_masked", "phone_sha256", "acquired_at", "acquisition_channel", "acquisition_referrer_key",
    "acquisition_campaign", "first_paid_at", "first_paid_order_id", "last_paid_at", "paid_orders", "net_revenue",
    "points_redeemed", "is_reachable", "reachable_channels", "opted_out", "is_member", "is_activated", "is_retained",
    "is_repurchased", "is_referrer", "customers_referred", "last_activity_at", "referrals_converted",
    "referrals_converted_12m", "r_score", "f_score", "m_score", "rfm_segment", "lifecycle_stage", "data_end_at",
]


def days_before_end(days: float) -> dt.datetime:
    return DATA_END - dt.timedelta(days=days)


def phone_sha(phone11: str) -> str:
    return hashlib.sha256(("86" + phone11).encode()).hexdigest()


def customer(key: str, **over) -> dict:
    """A reachable customer with no purchase, acquired 200 days before the data end; override any column."""
    row = {c: None for c in COLUMN_ORDER}
    row.update(
        customer_key=key,
        openid=f"oA{key}",
        openid_channel="official_account",
        acquired_at=days_before_end(200),
        acquisition_channel="official_account",
        paid_orders=0,
        net_revenue=0,
        points_redeemed=0,
        is_reachable=True,
        reachable_channels="official_account",
        opted_out=False,
        is_member=False,
        is_activated=False,
        is_retained=False,
        is_repurchased=False,
        is_referrer=False,
        customers_referred=0,
        last_activity_at=days_before_end(200),
        referrals_converted=0,
        referrals_converted_12m=0,
        rfm_segment="No Purchase",
        lifecycle_stage="dormant",
        data_end_at=DATA_END,
    )
    row.update(over)
    return row


def write_dim_customers(warehouse: Path, rows: Iterable[dict]) -> None:
    con = connect(warehouse)
    try:
        con.execute(DIM_DDL)
        placeholders = ", ".join("?" for _ in COLUMN_ORDER)
        for r in rows:
            con.execute(f"insert into marts.dim_customers values ({placeholders})", [r[c] for c in COLUMN_ORDER])
    finally:
        con.close()


def query(warehouse: Path, sql: str, params=None) -> list[tuple]:
    con = duckdb.connect(str(warehouse), read_only=True)
    try:
        return con.execute(sql, params or []).fetchall()
    finally:
        con.close()


# ----------------------------------------------------------------------------------- scripted HTTP server


class LocalHTTPServer:
    """A threaded HTTP server on 127.0.0.1 and a free port, started and stopped as a context manager."""

    def _serve(self, handler: type[http.server.BaseHTTPRequestHandler]) -> None:
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


class ScriptedServer(LocalHTTPServer):
    """An HTTP server on 127.0.0.1 whose answers follow a script, and a receiver that honours idempotency keys.

    `script` is a list of actions consumed one per request (then "ok" forever):
      "ok"        apply the batch (once per idempotency key) and answer 200
      "429"       answer 429 with Retry-After: 0, apply nothing
      "500"       answer 500, apply nothing
      "timeout"   apply the batch, but answer only after the client's timeout (a slow receiver: the
                  client's retry is a duplicate delivery)
      "drop"      apply the batch, then close the connection without answering (the client must retry:
                  its retry is a duplicate delivery, recognised by its idempotency key)
      "reject:K"  apply the batch except customer_key K and answer 200 listing K as rejected
    The server verifies every signature against `secret`.
    """

    def __init__(self, script: list[str], secret: str = "s3cret", sleep_seconds: float = 1.0):
        self.script = list(script)
        self.secret = secret
        self.sleep_seconds = sleep_seconds
        self.requests: list[dict] = []  # every request received, in order
        self.applied_keys: dict[str, int] = {}  # idempotency key -> times delivered
        self.members: dict[str, int] = {}  # customer_key -> times the add took effect (by effect: once)
        self.removed: dict[str, int] = {}
        self.remove_reasons: dict[str, object] = {}  # customer_key -> the `reason` its last remove carried
        self.bad_signatures = 0
        self.lock = threading.Lock()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep pytest output clean
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                outer.handle(self, body)

            def do_GET(self):
                outer.handle(self, b"")

        self._serve(Handler)

    def next_action(self) -> str:
        with self.lock:
            return self.script.pop(0) if self.script else "ok"

    def _apply(self, payload: dict, key: str, skip: str | None = None) -> None:
        with self.lock:
            first = key not in self.applied_keys
            self.applied_keys[key] = self.applied_keys.get(key, 0) + 1
            if not first:
                return  # a duplicate delivery: recognised by its key, no second effect
            for row in payload["rows"]:
                if row["customer_key"] == skip:
                    continue
                target = self.members if payload["operation"] == "add" else self.removed
                target[row["customer_key"]] = target.get(row["customer_key"], 0) + 1
                if payload["operation"] == "remove":
                    self.remove_reasons[row["customer_key"]] = row.get("reason")

    def handle(self, handler, body: bytes) -> None:
        import hmac

        action = self.next_action()
        expected = "sha256=" + hmac.new(self.secret.encode(), body, hashlib.sha256).hexdigest()
        signature_ok = hmac.compare_digest(handler.headers.get("X-Privdom-Signature", ""), expected)
        payload = json.loads(body) if body else {}
        key = handler.headers.get("Idempotency-Key", "")
        with self.lock:
            self.requests.append({"action": action, "key": key, "operation": payload.get("operation"),
                                  "rows": [r["customer_key"] for r in payload.get("rows", [])], "signature_ok": signature_ok})
            if not signature_ok:
                self.bad_signatures += 1
        if not signature_ok or payload.get("idempotency_key") != key:
            return self._answer(handler, 401, {"error": "bad signature"})
        if action == "429":
            return self._answer(handler, 429, {"error": "slow down"}, {"Retry-After": "0"})
        if action == "500":
            return self._answer(handler, 500, {"error": "boom"})
        if action == "timeout":
            self._apply(payload, key)
            time.sleep(self.sleep_seconds)
            return self._answer(handler, 200, {"ok": True, "late": True})
        if action == "drop":
            self._apply(payload, key)
            handler.close_connection = True
            try:
                handler.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return None
        if action.startswith("reject:"):
            skipped = action.split(":", 1)[1]
            self._apply(payload, key, skip=skipped)
            return self._answer(handler, 200, {"rejected": [{"customer_key": skipped, "error": "unknown contact"}]})
        self._apply(payload, key)
        return self._answer(handler, 200, {"ok": True})

    @staticmethod
    def _answer(handler, status: int, body: dict, headers: dict | None = None) -> None:
        data = json.dumps(body).encode()
        try:
            handler.send_response(status)
            for k, v in (headers or {}).items():
                handler.send_header(k, v)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(data)))
            handler.end_headers()
            handler.wfile.write(data)
        except OSError:
            pass
