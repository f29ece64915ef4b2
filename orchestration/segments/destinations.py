"""Destinations a segment is synced to (SPEC §5 "Delivery to marketing tools"): a webhook and WeCom tags.

Configured in `$PRIVDOM_HOME/privdom.toml` as `[destinations.<name>]`; secrets come from environment
variables named in the config, never from the file. HTTP goes through httpx, retries through tenacity:
transient failures (timeouts, dropped connections, 5xx, 429, WeCom's rate-limit and busy codes) are retried
with exponential backoff (honouring Retry-After, capped); anything else fails the rows concerned, which the
next sync sends again.

A client's `send(operation, rows)` returns one `RowOutcome` per row; it never raises for a row's failure.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import hashlib
import hmac
import json
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
import tenacity

from orchestration.segments.definitions import NAME_PATTERN

TYPES = ("webhook", "wecom")
MODES = ("mirror", "additive")
ENV_NAME = re.compile(r"[A-Z_][A-Z0-9_]{0,127}")
LOOPBACK = ("127.0.0.1", "localhost", "::1")
WECOM_DEFAULT_BASE = "https://qyapi.weixin.qq.com"
WECOM_RETRY_CODES = {45009: "API rate limit", 45011: "API called too often", 45033: "too many concurrent calls", -1: "system busy"}
WECOM_TOKEN_CODES = {40014: "invalid access_token", 42001: "access_token expired"}
RETRY_HTTP_STATUS = {408, 425, 429, 500, 502, 503, 504}
SIGNATURE_HEADER = "X-Privdom-Signature"
IDEMPOTENCY_HEADER = "Idempotency-Key"


class DestinationConfigError(ValueError):
    """A destination is configured wrongly; the message names it."""


class DestinationUnavailable(RuntimeError):
    """The destination cannot be used at all this sync (no secret, token refused); rows stay unsent.

    `outcomes`: the rows of the batch being sent that the destination answered before (in the batch's order)."""

    def __init__(self, message: str, outcomes: Sequence[RowOutcome] = ()) -> None:
        super().__init__(message)
        self.outcomes = list(outcomes)


@dataclass(frozen=True)
class DestinationConfig:
    name: str
    type: str
    segments: tuple[str, ...]
    mode: str = "mirror"
    url: str | None = None  # webhook
    secret_env: str | None = None  # webhook: env var holding the HMAC secret
    base_url: str = WECOM_DEFAULT_BASE  # wecom
    corp_id_env: str = "PRIVDOM_WECOM_CORP_ID"
    corp_secret_env: str = "PRIVDOM_WECOM_CORP_SECRET"
    tags: Mapping[str, str] = field(default_factory=dict)  # wecom: segment -> tag id
    batch_size: int = 500
    timeout_seconds: float = 10.0
    max_attempts: int = 5
    backoff_seconds: float = 1.0
    max_backoff_seconds: float = 60.0


@dataclass
class RowOutcome:
    customer_key: str
    accepted: bool
    attempts: int
    error: str | None = None
    batch_key: str | None = None


_COMMON = {"type", "segments", "mode", "batch_size", "timeout_seconds", "max_attempts", "backoff_seconds", "max_backoff_seconds"}
_FIELDS = {"webhook": _COMMON | {"url", "secret_env"}, "wecom": (_COMMON - {"segments"}) | {"base_url", "corp_id_env", "corp_secret_env", "tags"}}


def _url_ok(url: Any) -> bool:
    if not isinstance(url, str):
        return False
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return True
    return parts.scheme == "http" and parts.hostname in LOOPBACK  # plain http only to this machine (tests, a local relay)


def parse_destinations(raw: Mapping[str, Any], segment_names: Sequence[str], origin: str = "privdom.toml",
                       switched_off: Sequence[str] = ()) -> list[DestinationConfig]:
    """Validate the `[destinations.<name>]` tables against the known (enabled) segments; all problems at once.
    `switched_off`: segments defined with enabled = false, named as such when a destination lists one."""
    problems: list[str] = []
    out = []
    for name, table in raw.items():
        where = f"destination {name!r} ({origin})"
        if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
            problems.append(f"{where}: a destination name is lower-case letters, digits and '_', starting with a letter")
            continue
        if not isinstance(table, Mapping):
            problems.append(f"{where}: must be a table")
            continue
        kind = table.get("type")
        if kind not in TYPES:
            problems.append(f"{where}: type must be one of {', '.join(TYPES)}, not {kind!r}")
            continue
        unknown = set(table) - _FIELDS[kind]
        if unknown:
            problems.append(f"{where}: unknown field(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(_FIELDS[kind]))}")
        values: dict[str, Any] = {"name": name, "type": kind}
        mode = table.get("mode", "mirror")
        if mode not in MODES:
            problems.append(f"{where}: mode must be mirror or additive, not {mode!r}")
        values["mode"] = mode
        for key, low, high in (("batch_size", 1, 10_000), ("max_attempts", 1, 20)):
            v = table.get(key, DestinationConfig.__dataclass_fields__[key].default)
            if not isinstance(v, int) or isinstance(v, bool) or not low <= v <= high:
                problems.append(f"{where}: {key} must be a whole number from {low} to {high}, not {v!r}")
            values[key] = v
        for key in ("timeout_seconds", "backoff_seconds", "max_backoff_seconds"):
            v = table.get(key, DestinationConfig.__dataclass_fields__[key].default)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0 <= v <= 3600:
                problems.append(f"{where}: {key} must be a number of seconds from 0 to 3600, not {v!r}")
            values[key] = float(v) if isinstance(v, (int, float)) else v
        if kind == "webhook":
            segments = table.get("segments")
            if not isinstance(segments, list) or not segments or not all(isinstance(s, str) for s in segments):
                problems.append(f"{where}: segments must be a non-empty list of segment names")
                segments = []
            if not _url_ok(table.get("url")):
                problems.append(f"{where}: url must be an https:// URL (http:// only to 127.0.0.1 or localhost), not {table.get('url')!r}")
            secret_env = table.get("secret_env")
            if not isinstance(secret_env, str) or not ENV_NAME.fullmatch(secret_env):
                problems.append(f"{where}: secret_env must name the environment variable that holds the signing secret (e.g. PRIVDOM_CRM_SECRET), not {secret_env!r}")
            values.update(url=table.get("url"), secret_env=secret_env)
        else:
            tags = table.get("tags")
            if not isinstance(tags, Mapping) or not tags or not all(isinstance(v, str) and v for v in tags.values()):
                problems.append(f"{where}: tags must be a table of segment = \"<WeCom tag id>\"")
                tags = {}
            segments = list(tags)
            base_url = table.get("base_url", WECOM_DEFAULT_BASE)
            if not _url_ok(base_url):
                problems.append(f"{where}: base_url must be an https:// URL (http:// only to 127.0.0.1 or localhost), not {base_url!r}")
            for key in ("corp_id_env", "corp_secret_env"):
                v = table.get(key, DestinationConfig.__dataclass_fields__[key].default)
                if not isinstance(v, str) or not ENV_NAME.fullmatch(v):
                    problems.append(f"{where}: {key} must name an environment variable, not {v!r}")
                values[key] = v
            values.update(base_url=str(base_url).rstrip("/"), tags=dict(tags))
        off = [s for s in segments if s not in segment_names and s in switched_off]
        if off:  # the marketer review was told "unknown segment" of a segment it had only switched off
            problems.append(
                f"{where}: segment(s) {', '.join(map(repr, off))} switched off (enabled = false): switch it on, or take it "
                f"out of this destination's `{'tags' if kind == 'wecom' else 'segments'}` (its opted-out and unreachable customers held there are removed "
                "all the same, the others stay)")
        missing = [s for s in segments if s not in segment_names and s not in switched_off]
        if missing:
            problems.append(f"{where}: unknown segment(s) {', '.join(map(repr, missing))}; defined: {', '.join(segment_names)}")
        values["segments"] = tuple(dict.fromkeys(segments))
        out.append(values)
    if problems:
        raise DestinationConfigError("invalid destinations:\n  " + "\n  ".join(problems))
    return [DestinationConfig(**v) for v in out]


# ------------------------------------------------------------------------------------------------ retries


class _Transient(Exception):
    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


def _retry_after(response: httpx.Response, now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC)) -> float | None:
    """Seconds the server asks us to wait: `Retry-After` as delay-seconds or as an HTTP-date (RFC 9110 §10.2.3),
    measured against the server's own `Date` header when it sends one (clocks differ), else against ours."""
    value = (response.headers.get("Retry-After") or "").strip()
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        at = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    try:
        sent = email.utils.parsedate_to_datetime(response.headers.get("Date", ""))
    except (TypeError, ValueError):
        sent = None
    if at.tzinfo is None or (sent is not None and sent.tzinfo is None):
        return None  # an HTTP-date is always GMT; a date without a zone is not one
    return max(0.0, (at - (sent or now())).total_seconds())


def _retrying(config: DestinationConfig, sleep: Callable[[float], None]) -> tenacity.Retrying:
    backoff = tenacity.wait_exponential(multiplier=config.backoff_seconds, max=config.max_backoff_seconds)

    def wait(state: tenacity.RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, _Transient) and exc.retry_after is not None:
            return min(exc.retry_after, config.max_backoff_seconds)
        return backoff(state)

    return tenacity.Retrying(
        stop=tenacity.stop_after_attempt(config.max_attempts),
        wait=wait,
        retry=tenacity.retry_if_exception_type(_Transient),
        sleep=sleep,
        reraise=True,
    )


# A query parameter whose value is a credential (WeCom puts the access token and the corp secret in the URL; a
# webhook URL may carry an API key): a proxy's or a gateway's error page that echoes the URL would store it in
# sync_log, the BI copy, Dagster's event log and the run summary (the privacy review found the corp secret there).
# A name is a credential's when it ends in one of these words (client_secret, refresh_token, x_api_key, corpid).
_CREDENTIAL_NAME = r"[A-Za-z0-9_.\-]*(?:token|secret|key|signature|sig|password|passwd|corpid|auth)"
_CREDENTIAL_FORMS = (
    # name=value in a query or form, also URL-encoded inside another URL (name%3Dvalue%26...)
    re.compile(rf"(?i)(?<![A-Za-z0-9_.\-])({_CREDENTIAL_NAME}(?:=|%3D))(?:(?!%26)[^&\s\"'<>;])+"),
    # "name": "value" in a JSON body
    re.compile(rf'(?i)("{_CREDENTIAL_NAME}"\s*:\s*")[^"]*'),
    # an Authorization header's credentials
    re.compile(r"(?i)\b((?:bearer|basic)\s+)[A-Za-z0-9._~+/=\-]+"),
)


def is_credential_name(name: str) -> bool:
    return re.fullmatch(rf"(?i){_CREDENTIAL_NAME}", name) is not None


def redact(text: str, secrets: Iterable[str | None] = ()) -> str:
    """`text` without any of `secrets` (whole values, longest first) and without the value of anything named like
    a credential (a query or form parameter, plain or URL-encoded; a JSON key; an Authorization header). Every
    error a client reports passes through it before it is stored or shown."""
    for secret in sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True):
        text = text.replace(secret, "***")
    for form in _CREDENTIAL_FORMS:
        text = form.sub(lambda m: m.group(1) + "***", text)
    return text


def _answer(response: httpx.Response, limit: int) -> str:
    """The start of an answer's body for an error message (redacted where it is stored: see redact)."""
    text = response.text
    return text if len(text) <= limit else text[:limit] + "…"


def _transport_error(exc: httpx.HTTPError) -> _Transient:
    if isinstance(exc, httpx.TimeoutException):
        return _Transient(f"timeout ({type(exc).__name__})")
    return _Transient(f"connection error ({type(exc).__name__}: {exc})")


# ------------------------------------------------------------------------------------------------ webhook


def canonical_json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str).encode("utf-8")


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


class WebhookClient:
    """POSTs JSON batches: {destination, segment, segment_version, operation, idempotency_key, rows}.

    The idempotency key is the SHA-256 of the batch's content (destination, segment, version, operation,
    rows) and the sync run, so every retry of a batch carries the same key and the same body and the
    receiver applies a key once. A later sync that re-sends failed rows uses a new key: the receiver may
    have rejected the old one for good, and re-applying an add or a remove changes nothing. Headers: `Idempotency-Key` and `X-Privdom-Signature:
    sha256=<hex HMAC-SHA256 of the body>`. A 2xx answer accepts the batch, except rows the receiver lists in
    an optional `{"rejected": [{"customer_key": ..., "error": ...}]}` body (bare keys are taken too). A 2xx
    answer whose body is not JSON (a proxy's page) is retried like a 503; one whose `rejected` names rows
    otherwise fails the whole batch: nothing is counted as delivered that may not have been.
    """

    def __init__(self, config: DestinationConfig, secret: str, *, http: httpx.Client | None = None, sleep: Callable[[float], None] = time.sleep):
        self.config = config
        self.secret = secret
        self.http = http or httpx.Client(timeout=config.timeout_seconds)
        self.sleep = sleep
        self.requests_sent = 0

    @classmethod
    def from_environment(cls, config: DestinationConfig, **kwargs: Any) -> WebhookClient:
        secret = os.environ.get(config.secret_env or "")
        if not secret:
            raise DestinationUnavailable(f"destination {config.name!r}: environment variable {config.secret_env} (the webhook signing secret) is not set")
        return cls(config, secret, **kwargs)

    def batch_body(self, segment: str, segment_version: int, operation: str, rows: Sequence[Mapping[str, Any]], sync_run_id: str = "") -> tuple[str, bytes]:
        content = {"destination": self.config.name, "segment": segment, "segment_version": segment_version, "operation": operation,
                   "sync_run_id": sync_run_id, "rows": list(rows)}
        key = hashlib.sha256(canonical_json(content)).hexdigest()[:40]
        return key, canonical_json({**content, "idempotency_key": key})

    def send(self, segment: str, segment_version: int, operation: str, rows: Sequence[Mapping[str, Any]], sync_run_id: str = "") -> list[RowOutcome]:
        key, body = self.batch_body(segment, segment_version, operation, rows, sync_run_id)
        headers = {"Content-Type": "application/json", IDEMPOTENCY_HEADER: key, SIGNATURE_HEADER: sign(self.secret, body)}
        attempts = 0

        def attempt() -> httpx.Response:
            nonlocal attempts
            attempts += 1
            self.requests_sent += 1
            try:
                response = self.http.post(self.config.url, content=body, headers=headers, timeout=self.config.timeout_seconds)
            except httpx.HTTPError as exc:
                raise _transport_error(exc) from exc
            if response.status_code in RETRY_HTTP_STATUS:
                raise _Transient(f"HTTP {response.status_code}", _retry_after(response))
            if 200 <= response.status_code < 300 and response.content.strip() and not _is_json(response):
                # not the receiver's answer (a proxy's or a load balancer's page): nothing says what it took
                raise _Transient(f"HTTP {response.status_code} with an answer that is not JSON: {_answer(response, 100)!r}")
            return response

        try:
            response = _retrying(self.config, self.sleep)(attempt)
        except _Transient as exc:
            error = self._redact(f"gave up after {attempts} attempts: {exc}")
            return [RowOutcome(r["customer_key"], False, attempts, error, key) for r in rows]
        if not 200 <= response.status_code < 300:
            error = f"HTTP {response.status_code}: {_answer(response, 200)}"
            return [RowOutcome(r["customer_key"], False, attempts, self._redact(error), key) for r in rows]
        rejected: dict[str, str] = {}
        answer = _json_or_none(response)
        listed = answer.get("rejected") if isinstance(answer, dict) else None
        if listed is not None:
            # rows the receiver did not take: a list of {"customer_key", "error"} objects (or bare keys) of this
            # batch; an answer that names them otherwise cannot say which rows it took, so none counts as
            # delivered (all are sent again next time)
            sent = {r["customer_key"] for r in rows}
            for item in listed if isinstance(listed, list) else [None]:
                if isinstance(item, dict) and item.get("customer_key") in sent:
                    rejected[item["customer_key"]] = self._redact(str(item.get("error") or "rejected by the destination"))
                elif isinstance(item, str) and item in sent:
                    rejected[item] = "rejected by the destination"
                else:
                    error = (f"HTTP {response.status_code}, but its `rejected` is not a list of this batch's rows: "
                             f"{_answer(response, 200)}")
                    return [RowOutcome(r["customer_key"], False, attempts, self._redact(error), key) for r in rows]
        return [
            RowOutcome(r["customer_key"], r["customer_key"] not in rejected, attempts, rejected.get(r["customer_key"]), key)
            for r in rows
        ]

    def _redact(self, text: str) -> str:
        """Without the signing secret, nor the value of a credential-named parameter of the URL (an API key)."""
        query = parse_qsl(urlsplit(self.config.url).query, keep_blank_values=True)
        return redact(text, [self.secret, *(value for name, value in query if is_credential_name(name))])

    def close(self) -> None:
        self.http.close()


def _is_json(response: httpx.Response) -> bool:
    try:
        response.json()
    except ValueError:
        return False
    return True


def _json_or_none(response: httpx.Response) -> Any:
    """The answer's JSON, or None when there is none (an empty body is JSON null too: nothing to say)."""
    try:
        return response.json() if response.content.strip() else None
    except ValueError:
        return None


# -------------------------------------------------------------------------------------------------- WeCom


# WeCom rows in a row that gave up (every retry transient) before a sync stops sending to it
GIVE_UP_IN_A_ROW = 3


class WeComClient:
    """WeCom customer tags: `externalcontact/mark_tag`, one call per contact (the API takes one external_userid).

    The access token comes from `GET /cgi-bin/gettoken?corpid=&corpsecret=` (corp id and secret from the
    environment) and is cached until `expires_in` minus a safety margin; 40014/42001 fetch a new one and call again
    at once, within the same attempt (a second refusal is retried with backoff).
    WeCom answers HTTP 200 with an `errcode`: 0 accepts the row; 45009, 45011, 45033 (call limits) and -1 (busy) are retried
    with backoff; any other code fails that row with WeCom's errmsg.
    """

    TOKEN_MARGIN_SECONDS = 300

    def __init__(self, config: DestinationConfig, corp_id: str, corp_secret: str, *, http: httpx.Client | None = None,
                 sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic):
        self.config = config
        self.corp_id = corp_id
        self.corp_secret = corp_secret
        self.http = http or httpx.Client(timeout=config.timeout_seconds)
        self.sleep = sleep
        self.clock = clock
        self._token: str | None = None
        self._tokens: set[str] = set()  # every token fetched: none is ever written into an error
        self._token_expires = 0.0
        self.token_requests = 0
        self.requests_sent = 0

    @classmethod
    def from_environment(cls, config: DestinationConfig, **kwargs: Any) -> WeComClient:
        corp_id, secret = os.environ.get(config.corp_id_env), os.environ.get(config.corp_secret_env)
        missing = [n for n, v in ((config.corp_id_env, corp_id), (config.corp_secret_env, secret)) if not v]
        if missing:
            raise DestinationUnavailable(f"destination {config.name!r}: environment variable(s) {', '.join(missing)} (WeCom corp id / secret) not set")
        return cls(config, corp_id, secret, **kwargs)

    def _get_json(self, method: str, url: str, **kwargs: Any) -> dict:
        try:
            response = self.http.request(method, url, timeout=self.config.timeout_seconds, **kwargs)
        except httpx.HTTPError as exc:
            raise _transport_error(exc) from exc
        if response.status_code in RETRY_HTTP_STATUS:
            raise _Transient(f"HTTP {response.status_code}", _retry_after(response))
        if response.status_code != 200:
            raise RuntimeError(f"HTTP {response.status_code}: {_answer(response, 200)}")
        try:
            answer = response.json()
        except ValueError:
            raise _Transient(f"HTTP 200 with a body that is not JSON: {_answer(response, 100)!r}") from None
        if not isinstance(answer, dict) or "errcode" not in answer:
            raise RuntimeError(f"unexpected answer {str(answer)[:200]}")
        return answer

    def token(self) -> str:
        if self._token and self.clock() < self._token_expires:
            return self._token

        def fetch() -> dict:
            self.token_requests += 1
            answer = self._get_json("GET", f"{self.config.base_url}/cgi-bin/gettoken", params={"corpid": self.corp_id, "corpsecret": self.corp_secret})
            if answer.get("errcode") in WECOM_RETRY_CODES:
                raise _Transient(f"gettoken errcode {answer['errcode']}: {answer.get('errmsg', '')}")
            return answer

        try:
            answer = _retrying(self.config, self.sleep)(fetch)
        except (_Transient, RuntimeError) as exc:
            raise DestinationUnavailable(self._redact(f"destination {self.config.name!r}: gettoken failed: {exc}")) from None
        if answer.get("errcode") != 0 or not answer.get("access_token"):
            raise DestinationUnavailable(self._redact(
                f"destination {self.config.name!r}: gettoken refused: errcode {answer.get('errcode')}: {answer.get('errmsg', '')}"
            ))
        self._token = str(answer["access_token"])
        self._tokens.add(self._token)
        expires_in = float(answer.get("expires_in", 7200))
        self._token_expires = self.clock() + max(0.0, expires_in - min(self.TOKEN_MARGIN_SECONDS, expires_in / 2))
        return self._token

    def _redact(self, text: str) -> str:
        """Without the corp secret, the corp id or any access token fetched."""
        return redact(text, [self.corp_secret, self.corp_id, *self._tokens])

    def _invalidate(self) -> None:
        self._token = None
        self._token_expires = 0.0

    def mark_tag(self, staff_userid: str, external_userid: str, tag_id: str, operation: str) -> tuple[bool, int, str | None]:
        """(accepted, attempts, error) for one contact."""
        body = {"userid": staff_userid, "external_userid": external_userid, "add_tag" if operation == "add" else "remove_tag": [tag_id]}
        attempts = 0

        def call() -> dict:
            nonlocal attempts
            attempts += 1
            self.requests_sent += 1
            token = self.token()
            return self._get_json("POST", f"{self.config.base_url}/cgi-bin/externalcontact/mark_tag", params={"access_token": token}, json=body)

        def attempt() -> dict:
            answer = call()
            code = answer.get("errcode")
            if code in WECOM_TOKEN_CODES:
                # the cached token died before its time (revoked, or another client fetched a new one): a fresh
                # token and the same call at once, within this attempt, so that max_attempts = 1 still tags
                self._invalidate()
                answer = call()
                code = answer.get("errcode")
                if code in WECOM_TOKEN_CODES:  # refused again with a token just issued: retried with backoff
                    self._invalidate()
                    raise _Transient(f"errcode {code}: {WECOM_TOKEN_CODES[code]}")
            if code in WECOM_RETRY_CODES:
                raise _Transient(f"errcode {code}: {answer.get('errmsg') or WECOM_RETRY_CODES[code]}")
            return answer

        try:
            answer = _retrying(self.config, self.sleep)(attempt)
        except _Transient as exc:
            return False, attempts, f"gave up after {attempts} attempts: {exc}"
        except DestinationUnavailable:
            raise  # no token: the whole sync stops, the rows stay due
        except RuntimeError as exc:
            return False, attempts, str(exc)
        if answer.get("errcode") == 0:
            return True, attempts, None
        return False, attempts, f"errcode {answer.get('errcode')}: {answer.get('errmsg', '')}"

    def send(self, segment: str, segment_version: int, operation: str, rows: Sequence[Mapping[str, Any]], sync_run_id: str = "") -> list[RowOutcome]:
        """One mark_tag call per row. After GIVE_UP_IN_A_ROW rows in a row gave up (every retry transient: WeCom
        down or rate limiting for good), the sync stops (DestinationUnavailable with the rows answered so far):
        a batch is one call per row, so waiting for a whole batch to give up took hours."""
        out: list[RowOutcome] = []
        in_a_row = 0
        for r in rows:
            tag_id = r.get("target") or self.config.tags[segment]  # a remove names the tag it is held at
            try:
                ok, attempts, error = self.mark_tag(r["wecom_staff_userid"], r["wecom_external_userid"], tag_id, operation)
            except DestinationUnavailable as exc:  # no token any more: the contacts tagged so far still count
                raise DestinationUnavailable(self._redact(str(exc)), out) from None
            error = self._redact(error) if error else error
            out.append(RowOutcome(r["customer_key"], ok, attempts, error, None))
            in_a_row = in_a_row + 1 if (error or "").startswith("gave up") else 0
            if in_a_row >= GIVE_UP_IN_A_ROW and len(out) < len(rows):
                raise DestinationUnavailable(f"destination unavailable, stopped sending: {in_a_row} contacts in a row: {error}", out)
        return out

    def close(self) -> None:
        self.http.close()


def client_for(config: DestinationConfig, **kwargs: Any) -> WebhookClient | WeComClient:
    """A client for a configured destination, its secrets read from the environment now."""
    if config.type == "webhook":
        return WebhookClient.from_environment(config, **kwargs)
    return WeComClient.from_environment(config, **kwargs)
