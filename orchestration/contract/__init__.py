"""The raw data contract of SPEC §2, as data.

This module is the leaf of the package: it imports nothing of privdom. Ingestion turns each rule into a SQL
predicate run in DuckDB, the quality module turns each rule into a Great Expectations expectation, and the
generator injects rows that break each rule (all but `row.malformed`, a file's syntax). A rule is written here once.

Vocabulary
----------
* *delivered value*: the cell as it arrived, trimmed; an empty string is "absent".
* *typed value*: the delivered value converted to the column's type (NULL when absent or not convertible).
* Every rule is judged on one row and names the columns it reads. A row may break several rules; quarantine
  records all of them, the first in contract order being the row's ``rule``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

SOURCES: tuple[str, ...] = ("channel_events", "orders", "referrals")

CHANNELS: tuple[str, ...] = (
    "official_account",
    "wecom",
    "community_group",
    "mini_program",
    "live_stream",
    "offline_store",
)
EVENT_TYPES: tuple[str, ...] = (
    "follow",
    "unfollow",
    "add_contact",
    "remove_contact",
    "join_group",
    "leave_group",
    "register_member",
    "engage",
    "opt_out",
    "opt_in",
)
ORDER_STATUSES: tuple[str, ...] = (
    "created",
    "paid",
    "shipped",
    "completed",
    "cancelled",
    "refunded",
    "partially_refunded",
)
PAID_LIKE_STATUSES: tuple[str, ...] = ("paid", "shipped", "completed", "refunded", "partially_refunded")
REFERRAL_MECHANISMS: tuple[str, ...] = ("share_link", "invite_code", "distributor", "group_invite")
REFERRAL_STATUSES: tuple[str, ...] = ("invited", "clicked", "registered", "converted")

IDENTIFIER_COLUMNS: tuple[str, ...] = ("openid", "unionid", "wecom_external_userid", "phone", "member_id")
REFERRER_COLUMNS: tuple[str, ...] = ("referrer_member_id", "referrer_unionid", "referrer_phone")
REFEREE_COLUMNS: tuple[str, ...] = ("referee_openid", "referee_unionid", "referee_phone", "referee_member_id")

# SPEC §3: identifier values that never name a person (compared trimmed and lower-cased). "All zeros" is a
# pattern, not a value: see ALL_ZEROS_PATTERN. The settings add a configurable block list. `\n` is `\N`
# lower-cased, the NULL of MySQL's and Hive's exports: ingestion reads it as no value (rules.NULL_MARKERS), and as
# a placeholder it stops linking in staging the identifiers loaded as that text before that (the list is in the
# incremental models' fingerprint, so the first run after it rebuilds them).
BUILTIN_PLACEHOLDERS: tuple[str, ...] = ("", "null", "none", "undefined", "anonymous", "-1", "\\n")
ALL_ZEROS_PATTERN = r"^0+$"

# Mainland mobile numbers once normalised: 11 digits, 1 then 3-9 (SPEC §2).
MAINLAND_MOBILE_PATTERN = r"^1[3-9][0-9]{9}$"



def mask_phone(value: object) -> object:
    """A phone as it may be shown (138****8000): check metadata, reports, marts. Non-text passes through."""
    if not isinstance(value, str):
        return value
    digits = "".join(ch for ch in value if ch.isdigit())
    if len(digits) >= 7:
        return digits[:3] + "****" + digits[-4:]
    return "****"


# A mainland mobile anywhere in a text, in the spellings the marts' masking macro (privdom_mask_phones) and the
# exports' check know and a few more: ASCII or full-width digits, an optional +86 / ８６, and a space (ASCII or
# ideographic), dot or dash between any two digits. Python's \d would also take other scripts' digits: spelt out.
_DIGIT = "[0-9０-９]"
_SEPARATOR = "[ .\u3000\t-]?"
_MOBILE_IN_TEXT = re.compile(
    f"(?<![0-9０-９])(?:[+＋]?[8８]{_SEPARATOR}[6６]{_SEPARATOR})?[1１]{_SEPARATOR}[3-9３-９](?:{_SEPARATOR}{_DIGIT}){{9}}(?![0-9０-９])"
)
# A SHA-256 in hex: beside a masked phone (which leaves 10,000 candidates) an unsalted hash of the phone is the
# phone, so what people read (previews, examples) shows neither whole.
_SHA256_HEX = re.compile(r"^[0-9a-fA-F]{64}$")
_FULL_WIDTH_DIGITS = str.maketrans("０１２３４５６７８９", "0123456789")


def mask_text(value: object, *, hashes: bool = True) -> object:
    """Any text as it may be shown to people: every mainland mobile in it masked as 138****8000, and a value that
    is a SHA-256 (a phone's hash) hidden whole: even four of its characters pick the phone out of the mask's
    10,000 candidates. `hashes=False` shows a SHA-256 (a column known to hold files' hashes). Non-text passes
    through."""
    if not isinstance(value, str):
        return value
    if hashes and _SHA256_HEX.match(value):
        return "(sha256)"
    return _MOBILE_IN_TEXT.sub(
        lambda m: mask_phone(re.sub(r"[^0-9]", "", m.group(0).translate(_FULL_WIDTH_DIGITS))[-11:]), value
    )


ColumnType = Literal["string", "timestamp", "decimal", "integer", "enum", "phone"]


@dataclass(frozen=True)
class Column:
    name: str
    type: ColumnType
    description: str
    values: tuple[str, ...] = ()  # for enums: the allowed values, lower case
    default: str | None = None  # used when the delivered value is absent (amounts, points)
    is_identifier: bool = False


RuleKind = Literal[
    "well_formed",  # the record could be split into the file's columns (see MALFORMED_RULE); reads no column
    "required",  # the delivered value is present
    "type",  # a present delivered value converts to the column's type (cents, ISO-8601, integer, mobile)
    "in_set",  # a present value, trimmed and lower-cased, is one of Column.values
    "non_negative",  # a present typed value is >= 0
    "not_after",  # columns[0] <= columns[1] when both present
    "required_when",  # columns[0] present when columns[1] is one of `values`
    "refund_matches_status",  # SPEC §2 refund_amount rule, reading refund, gross, discount, status
    "any_identifier",  # at least one of `columns` present once placeholders are removed (unless `unless`)
    "before_batch_limit",  # every timestamp column < batch date + 2 days, 00:00 Asia/Shanghai
]


@dataclass(frozen=True)
class Rule:
    name: str
    kind: RuleKind
    columns: tuple[str, ...]
    description: str
    values: tuple[str, ...] = ()
    unless: tuple[str, tuple[str, ...]] | None = None  # (column, values): the rule does not apply then


@dataclass(frozen=True)
class SourceContract:
    name: str
    columns: tuple[Column, ...]
    rules: tuple[Rule, ...]
    key: str  # the business key (event_id, order_id, referral_id)
    version_column: str | None  # updated_at for versioned sources; None for append-only events
    description: str = ""
    required_columns: tuple[str, ...] = field(default=())  # a file without these is rejected whole

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    def column(self, name: str) -> Column:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(f"{self.name} has no column {name!r}")

    def rule(self, name: str) -> Rule:
        for r in self.rules:
            if r.name == name:
                return r
        raise KeyError(f"{self.name} has no rule {name!r}")

    @property
    def timestamp_columns(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns if c.type == "timestamp")

    @property
    def decimal_columns(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns if c.type == "decimal")

    @property
    def phone_columns(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns if c.type == "phone")


def _identifiers(prefix: str = "", names: tuple[str, ...] = IDENTIFIER_COLUMNS, who: str = "the person") -> tuple[Column, ...]:
    out = []
    for n in names:
        base = n.removeprefix(prefix)
        kind: ColumnType = "phone" if base == "phone" else "string"
        out.append(Column(n, kind, f"{who}'s {base}" + (" (mainland mobile, normalised to 11 digits)" if kind == "phone" else ""), is_identifier=True))
    return tuple(out)


# A record that cannot be split into the file's columns: a CSV row with more or fewer fields than the header, a
# JSON Lines line that is not a JSON object. The file is still read (SPEC §2: the rest of the batch loads);
# the record is quarantined with its text as delivered, and its columns, unread, are absent, so it also
# breaks the rules that need a value. First in every contract, so it is such a row's `rule`.
MALFORMED_RULE = Rule(
    "row.malformed", "well_formed", (),
    "a CSV row must have as many fields as the header line; a JSON Lines line must be a JSON object",
)


def _standard_rules(source: str, columns: tuple[Column, ...], required: tuple[str, ...]) -> list[Rule]:
    """The malformed-record rule, then required → type → in_set for every column, in column order."""
    rules: list[Rule] = [MALFORMED_RULE]
    for c in columns:
        if c.name in required:
            rules.append(Rule(f"{c.name}.required", "required", (c.name,), f"{c.name} must be present"))
    for c in columns:
        if c.type in ("timestamp", "decimal", "integer", "phone"):
            what = {
                "timestamp": "an ISO-8601 timestamp from 1990 on (a space may stand for the T; a date alone is its 00:00; no offset means Asia/Shanghai)",
                "decimal": ("an amount in whole cents under 100,000,000 yuan (plain digits with an optional sign and "
                            "point, at most 2 decimals that are not zero; no exponent, thousands separator or "
                            "currency sign; a float within 1e-9 of a cent value)"),
                "integer": "a whole number under 10,000,000,000",
                "phone": "a mainland mobile number once normalised (e.g. +86 138-0013-8000)",
            }[c.type]
            rules.append(Rule(f"{c.name}.type", "type", (c.name,), f"{c.name} must be {what}"))
        if c.type == "enum":
            rules.append(
                Rule(f"{c.name}.in_set", "in_set", (c.name,), f"{c.name} must be one of {', '.join(c.values)}", values=c.values)
            )
    return rules


# ---------------------------------------------------------------------------------------------- channel_events
_CE_COLUMNS: tuple[Column, ...] = (
    Column("event_id", "string", "Unique id of the event; an identical re-delivery is a duplicate"),
    Column("occurred_at", "timestamp", "When the event happened"),
    Column("channel", "enum", "Owned channel the event happened on", values=CHANNELS),
    Column("event_type", "enum", "What happened", values=EVENT_TYPES),
    *_identifiers(),
    Column("campaign", "string", "Campaign or QR code that brought the touch"),
    Column("wecom_staff_userid", "string", "For WeCom events: the staff member who owns the contact"),
)
_CE_REQUIRED = ("event_id", "occurred_at", "channel", "event_type")
CHANNEL_EVENTS = SourceContract(
    name="channel_events",
    description="Touches on owned channels: follows, contacts, groups, registrations, engagement, consent.",
    columns=_CE_COLUMNS,
    key="event_id",
    version_column=None,
    required_columns=_CE_REQUIRED,
    rules=(
        *_standard_rules("channel_events", _CE_COLUMNS, _CE_REQUIRED),
        Rule("identifier.required", "any_identifier", IDENTIFIER_COLUMNS, "at least one identifier must be present (placeholders do not count)"),
        Rule("timestamp.after_batch", "before_batch_limit", ("occurred_at",), "timestamps must be earlier than the batch date + 2 days, 00:00 Asia/Shanghai"),
    ),
)

# ---------------------------------------------------------------------------------------------- orders
_OR_COLUMNS: tuple[Column, ...] = (
    Column("order_id", "string", "The order; it appears again on every status change"),
    Column("updated_at", "timestamp", "When this version of the order was written"),
    Column("created_at", "timestamp", "When the order was placed"),
    Column("paid_at", "timestamp", "When the order was paid"),
    Column("status", "enum", "Order status of this version", values=ORDER_STATUSES),
    Column("channel", "enum", "Channel the order came through; absent means unknown", values=CHANNELS),
    Column("gross_amount", "decimal", "Order amount before discount, CNY yuan"),
    Column("discount_amount", "decimal", "Discount, CNY yuan", default="0"),
    Column("refund_amount", "decimal", "Amount refunded, CNY yuan", default="0"),
    Column("points_redeemed", "integer", "Loyalty points redeemed", default="0"),
    Column("referral_code", "string", "Invite or distributor code used at checkout"),
    *_identifiers(who="the buyer"),
)
_OR_REQUIRED = ("order_id", "updated_at", "created_at", "status", "gross_amount")
ORDERS = SourceContract(
    name="orders",
    description="Order versions: an order appears again when paid, shipped, refunded.",
    columns=_OR_COLUMNS,
    key="order_id",
    version_column="updated_at",
    required_columns=_OR_REQUIRED,
    rules=(
        *_standard_rules("orders", _OR_COLUMNS, _OR_REQUIRED),
        Rule("paid_at.required_when_paid", "required_when", ("paid_at", "status"), "paid_at is required when status is paid, shipped, completed, refunded or partially_refunded", values=PAID_LIKE_STATUSES),
        Rule("created_at.after_updated_at", "not_after", ("created_at", "updated_at"), "created_at must not be later than updated_at"),
        Rule("paid_at.before_created_at", "not_after", ("created_at", "paid_at"), "paid_at must not be earlier than created_at"),
        Rule("gross_amount.negative", "non_negative", ("gross_amount",), "gross_amount must be >= 0"),
        Rule("discount_amount.negative", "non_negative", ("discount_amount",), "discount_amount must be >= 0"),
        Rule("discount_amount.above_gross", "not_after", ("discount_amount", "gross_amount"), "discount_amount must not exceed gross_amount"),
        Rule("refund_amount.status_mismatch", "refund_matches_status", ("refund_amount", "gross_amount", "discount_amount", "status"), "refund_amount must equal gross - discount when refunded, lie strictly between 0 and gross - discount when partially_refunded, and be 0 otherwise"),
        Rule("points_redeemed.negative", "non_negative", ("points_redeemed",), "points_redeemed must be >= 0"),
        Rule("identifier.required", "any_identifier", IDENTIFIER_COLUMNS, "at least one buyer identifier must be present (placeholders do not count)"),
        Rule("timestamp.after_batch", "before_batch_limit", ("updated_at", "created_at", "paid_at"), "timestamps must be earlier than the batch date + 2 days, 00:00 Asia/Shanghai"),
    ),
)

# ---------------------------------------------------------------------------------------------- referrals
_RF_COLUMNS: tuple[Column, ...] = (
    Column("referral_id", "string", "One invitation from a referrer to a referee"),
    Column("updated_at", "timestamp", "When this version of the referral was written"),
    Column("invited_at", "timestamp", "When the invitation was sent"),
    Column("mechanism", "enum", "How the invitation travelled", values=REFERRAL_MECHANISMS),
    Column("status", "enum", "How far the referee got", values=REFERRAL_STATUSES),
    *_identifiers("referrer_", REFERRER_COLUMNS, who="the referrer"),
    *_identifiers("referee_", REFEREE_COLUMNS, who="the referee"),
    Column("order_id", "string", "For converted referrals: the referee's first order"),
    Column("commission_amount", "decimal", "Commission paid to the referrer, CNY yuan", default="0"),
)
_RF_REQUIRED = ("referral_id", "updated_at", "invited_at", "mechanism", "status")
REFERRALS = SourceContract(
    name="referrals",
    description="Referral versions: an invitation changes as the referee clicks, registers and buys.",
    columns=_RF_COLUMNS,
    key="referral_id",
    version_column="updated_at",
    required_columns=_RF_REQUIRED,
    rules=(
        *_standard_rules("referrals", _RF_COLUMNS, _RF_REQUIRED),
        Rule("invited_at.after_updated_at", "not_after", ("invited_at", "updated_at"), "invited_at must not be later than updated_at"),
        Rule("order_id.required_when_converted", "required_when", ("order_id", "status"), "order_id is required when status is converted", values=("converted",)),
        Rule("commission_amount.negative", "non_negative", ("commission_amount",), "commission_amount must be >= 0"),
        Rule("referrer.required", "any_identifier", REFERRER_COLUMNS, "at least one referrer identifier must be present (placeholders do not count)"),
        Rule("referee.required", "any_identifier", REFEREE_COLUMNS, "at least one referee identifier must be present unless status is invited", unless=("status", ("invited",))),
        Rule("timestamp.after_batch", "before_batch_limit", ("updated_at", "invited_at"), "timestamps must be earlier than the batch date + 2 days, 00:00 Asia/Shanghai"),
    ),
)

CONTRACTS: dict[str, SourceContract] = {c.name: c for c in (CHANNEL_EVENTS, ORDERS, REFERRALS)}

# File formats the landing zone accepts, by file-name ending (lower case). Anything else is rejected.
SUPPORTED_SUFFIXES: dict[str, str] = {
    ".csv": "csv",
    ".csv.gz": "csv",
    ".parquet": "parquet",
    ".jsonl": "jsonl",
    ".jsonl.gz": "jsonl",
    ".ndjson": "jsonl",
}

BATCH_DATE_HELP = (
    "name the file with its batch date as YYYYMMDD (e.g. orders_20240131.csv) "
    "or put it in a dt=YYYY-MM-DD folder (e.g. landing/orders/dt=2024-01-31/part-0.csv)"
)

# Columns ingestion adds to every raw table (lineage of each loaded row).
LINEAGE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("_file_id", "BIGINT"),  # ingestion_ledger.file_id: load order of files
    ("_batch_date", "DATE"),
    ("_row_number", "BIGINT"),  # 1-based position of the record in its file, header excluded
    ("_row_hash", "BIGINT"),  # 64-bit hash of the typed content (signed): identical re-deliveries share it
    ("_loaded_at", "TIMESTAMPTZ"),
)


def contract(source: str) -> SourceContract:
    try:
        return CONTRACTS[source]
    except KeyError:
        raise KeyError(f"unknown source {source!r}; sources are {', '.join(SOURCES)}") from None
