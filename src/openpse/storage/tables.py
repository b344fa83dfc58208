"""The schema: one SQLAlchemy Core ``MetaData`` for SQLite and PostgreSQL alike.

Conventions:
- every time is an integer count of seconds since the Unix epoch (UTC by construction, no
  time-zone ambiguity on either backend); request logs keep milliseconds where latency matters;
- money is ``BigInteger`` minor units beside a ``String(3)`` ISO 4217 code;
- ids are prefixed, time-ordered strings (``openpse.domain.ids``), so ``ORDER BY id`` is
  creation order and cursor pagination is a simple ``id < cursor``;
- resources carry ``version`` (starts at 1, +1 per change).
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)

__all__ = ["metadata"]

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

ID = 64
# SQLite autoincrements only an INTEGER PRIMARY KEY; PostgreSQL gets a 64-bit key.
BIGINT_PK = BigInteger().with_variant(Integer, "sqlite")


def _stamps() -> list[Column]:
    return [
        Column("created", BigInteger, nullable=False),
        Column("updated", BigInteger, nullable=False),
        Column("version", Integer, nullable=False, server_default="1"),
    ]


def _partial_index(name: str, *columns: str, where: str) -> Index:
    """An index of only the rows ``where`` holds for (both backends understand the predicate)."""
    return Index(name, *columns, postgresql_where=text(where), sqlite_where=text(where))


merchants = Table(
    "merchants",
    metadata,
    Column("id", String(ID), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("email", String(320)),
    # KYC: pending_review -> active | rejected; active -> suspended. Live keys need "active".
    Column("status", String(32), nullable=False),
    Column("pricing", JSON),  # per-merchant fee plan override; null = the default plan
    Column("sandbox_clock_offset_s", BigInteger, nullable=False, server_default="0"),
    *_stamps(),
)

access_keys = Table(
    "access_keys",
    metadata,
    Column("id", String(ID), primary_key=True),
    Column("merchant_id", String(ID), ForeignKey("merchants.id"), nullable=False, index=True),
    Column("livemode", Boolean, nullable=False),
    Column("secret_enc", Text, nullable=False),  # AES-GCM under the master key, never clear
    Column("secret_hint", String(16), nullable=False),  # last 4 characters, for display
    Column("status", String(16), nullable=False),  # active | revoked
    Column("expires_at", BigInteger),  # set when rotated: valid until then
    Column("replaced_by", String(ID)),
    Column("ip_allowlist", JSON, nullable=False),  # list of CIDR strings; empty = any
    Column("rate_limit_per_s", Integer),  # null = server default
    Column("description", String(200)),
    Column("last_used_at", BigInteger),
    Column("revoked_at", BigInteger),
    *_stamps(),
)

# Nonces seen per key inside the timestamp window: a replay store shared by all processes.
nonces = Table(
    "nonces",
    metadata,
    Column("access_key_id", String(ID), primary_key=True),
    Column("nonce", String(64), primary_key=True),
    Column("expires_at", BigInteger, nullable=False, index=True),
)

idempotency_keys = Table(
    "idempotency_keys",
    metadata,
    Column("id", BIGINT_PK, primary_key=True, autoincrement=True),
    Column("merchant_id", String(ID), nullable=False),
    Column("livemode", Boolean, nullable=False),
    Column("key", String(255), nullable=False),
    Column("request_hash", String(64), nullable=False),
    Column("method", String(8), nullable=False),
    Column("path", String(2048), nullable=False),
    Column("status", String(16), nullable=False),  # in_progress | completed
    Column("locked_at", BigInteger),  # while in progress; a stale lock may be taken over
    Column("resource_id", String(ID)),  # recovery point: what the first attempt created
    Column("response_status", Integer),
    Column("response_headers", JSON),
    Column("response_body", LargeBinary),
    Column("created", BigInteger, nullable=False),
    Column("expires_at", BigInteger, nullable=False, index=True),
    UniqueConstraint("merchant_id", "livemode", "key", name="uq_idempotency_scope"),
)

request_logs = Table(
    "request_logs",
    metadata,
    Column("id", String(ID), primary_key=True),  # the req_ id
    Column("merchant_id", String(ID)),
    Column("livemode", Boolean),
    Column("access_key_id", String(ID)),
    Column("method", String(8), nullable=False),
    Column("path", String(2048), nullable=False),
    Column("query", Text),
    Column("status", Integer, nullable=False),
    Column("error_code", String(64)),
    Column("duration_ms", Integer, nullable=False),
    Column("client_ip", String(64)),
    Column("idempotency_key", String(255)),
    Column("request_body", Text),  # redacted: no card number, no CVC, no secret
    Column("response_body", Text),  # redacted likewise, capped
    Column("created", BigInteger, nullable=False),
    Index("ix_request_logs_merchant_created", "merchant_id", "livemode", "id"),
)

payment_methods = Table(
    "payment_methods",
    metadata,
    Column("id", String(ID), primary_key=True),  # pm_
    Column("merchant_id", String(ID), nullable=False, index=True),
    Column("livemode", Boolean, nullable=False),
    Column("type", String(32), nullable=False),
    Column("brand", String(16), nullable=False),
    Column("last4", String(4), nullable=False),
    Column("bin6", String(6), nullable=False),
    Column("exp_month", Integer, nullable=False),
    Column("exp_year", Integer, nullable=False),
    Column("country", String(2)),
    Column("holder_name", String(200)),
    Column("fingerprint", String(64), nullable=False, index=True),  # keyed HMAC, not a hash
    Column("number_enc", Text, nullable=False),  # the vault: AES-GCM, key-versioned
    Column("created", BigInteger, nullable=False),
)

payments = Table(
    "payments",
    metadata,
    Column("id", String(ID), primary_key=True),
    Column("merchant_id", String(ID), nullable=False),
    Column("livemode", Boolean, nullable=False),
    Column("status", String(32), nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("currency", String(3), nullable=False),
    Column("amount_capturable", BigInteger, nullable=False, server_default="0"),
    Column("amount_received", BigInteger, nullable=False, server_default="0"),
    Column("amount_refunded", BigInteger, nullable=False, server_default="0"),
    Column("fee", BigInteger, nullable=False, server_default="0"),
    Column("capture_method", String(16), nullable=False),
    Column("merchant_order_id", String(255)),
    Column("description", String(1000)),
    Column("customer", JSON),
    Column("billing_address", JSON),
    Column("device", JSON),
    Column("return_url", String(2048)),
    Column("metadata", JSON, nullable=False),
    Column("payment_method_type", String(32)),
    Column("payment_method", JSON),  # the safe view: brand, last4, expiry, fingerprint, country
    Column("payment_method_id", String(ID)),  # pm_ in the vault
    Column("failure_code", String(64)),
    Column("failure_message", String(500)),
    Column("cancellation_reason", String(32)),
    Column("next_action", JSON),
    Column("expires_at", BigInteger),
    Column("connector", String(32)),
    Column("connector_reference", String(128)),
    Column("checkout_session_id", String(ID)),
    Column("captured_at", BigInteger),
    Column("canceled_at", BigInteger),
    *_stamps(),
    # Local methods (migration 0003). Received beyond ``amount`` (a bank transfer over-paid): the
    # shopper's money, refundable; ``amount_overpaid_refunded`` of it refunded or pending.
    Column("amount_overpaid", BigInteger, nullable=False, server_default="0"),
    Column("amount_overpaid_refunded", BigInteger, nullable=False, server_default="0"),
    Column("settles_at", BigInteger),  # a SEPA debit: when the shopper's bank answers
    Column("expiry_warned_at", BigInteger),  # payment.expiring_soon was emitted (once)
    Column("payment_method_enc", Text),  # AES-GCM of the method's secret (a debit's IBAN)
    Index("ix_payments_scope_id", "merchant_id", "livemode", "id"),
    # Filtered lists, newest first (migration 0004): each filter's index ends with ``id`` so the
    # filter and the order come from one index; SQLite (no statistics) otherwise walks the
    # whole scope by id looking for matches.
    Index("ix_payments_scope_order_id", "merchant_id", "livemode", "merchant_order_id", "id"),
    Index("ix_payments_scope_status", "merchant_id", "livemode", "status", "id"),
    # Partial (0006): only payments with the deadline are in them, so a card payment's insert
    # and its status changes (never HOT: status is indexed) skip both indexes.
    _partial_index("ix_payments_status_expires", "status", "expires_at",
                   where="expires_at IS NOT NULL"),
    _partial_index("ix_payments_status_settles", "status", "settles_at",
                   where="settles_at IS NOT NULL"),
)

# Every call to an acquirer, persisted before the call is made (status "pending"), so a crash
# between the call and the commit of its outcome is found and resolved by ``sync``.
payment_attempts = Table(
    "payment_attempts",
    metadata,
    Column("id", String(ID), primary_key=True),  # att_: also the reference the acquirer sees
    Column("payment_id", String(ID), nullable=False, index=True),
    Column("refund_id", String(ID)),
    Column("operation", String(16), nullable=False),  # authorize|capture|void|refund
    Column("connector", String(32), nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("currency", String(3), nullable=False),
    Column("status", String(16), nullable=False),  # pending|succeeded|failed|action_required
    Column("connector_reference", String(128)),
    Column("error_code", String(64)),
    Column("raw", JSON),
    Column("created", BigInteger, nullable=False),
    Column("updated", BigInteger, nullable=False),
    # Partial (0006): what the recovery job looks for; an answered attempt leaves it.
    _partial_index("ix_attempts_pending_created", "created", where="status = 'pending'"),
)

refunds = Table(
    "refunds",
    metadata,
    Column("id", String(ID), primary_key=True),
    Column("merchant_id", String(ID), nullable=False),
    Column("livemode", Boolean, nullable=False),
    Column("payment_id", String(ID), ForeignKey("payments.id"), nullable=False, index=True),
    Column("amount", BigInteger, nullable=False),
    Column("currency", String(3), nullable=False),
    Column("status", String(16), nullable=False),
    Column("reason", String(32)),
    Column("metadata", JSON, nullable=False),
    Column("failure_code", String(64)),
    Column("failure_message", String(500)),
    Column("destination", JSON),  # bank details for methods without a card network
    *_stamps(),
    # Local methods (migration 0003): ``payment`` (the merchant's money) or ``overpayment`` (an
    # over-paid transfer's excess); when a refund by bank transfer is paid out.
    Column("source", String(16), nullable=False, server_default="payment"),
    Column("completes_at", BigInteger),
    Index("ix_refunds_scope_id", "merchant_id", "livemode", "id"),
    Index("ix_refunds_status_completes", "status", "completes_at"),
)

checkout_sessions = Table(
    "checkout_sessions",
    metadata,
    Column("id", String(ID), primary_key=True),
    Column("merchant_id", String(ID), nullable=False),
    Column("livemode", Boolean, nullable=False),
    Column("status", String(16), nullable=False),  # open|complete|expired
    Column("amount", BigInteger, nullable=False),
    Column("currency", String(3), nullable=False),
    Column("merchant_order_id", String(255)),
    Column("payment_method_types", JSON, nullable=False),
    Column("success_url", String(2048), nullable=False),
    Column("cancel_url", String(2048), nullable=False),
    Column("locale", String(16)),
    Column("customer", JSON),
    Column("metadata", JSON, nullable=False),
    Column("expires_at", BigInteger, nullable=False),
    Column("payment_id", String(ID)),
    Column("completed_at", BigInteger),
    Column("page_token", String(64), nullable=False),  # unguessable part of the hosted URL
    # failed card payments made through the hosted page (0005): cards stop at a limit
    Column("card_declines", Integer, nullable=False, server_default="0"),
    *_stamps(),
    Index("ix_checkout_scope_id", "merchant_id", "livemode", "id"),
    Index("ix_checkout_status_expires", "status", "expires_at"),
)

events = Table(
    "events",
    metadata,
    Column("id", String(ID), primary_key=True),
    Column("merchant_id", String(ID), nullable=False),
    Column("livemode", Boolean, nullable=False),
    Column("type", String(64), nullable=False),
    Column("object_id", String(ID), nullable=False),
    Column("payload", Text, nullable=False),  # the full event JSON, exactly as delivered
    Column("created", BigInteger, nullable=False),
    Index("ix_events_scope_id", "merchant_id", "livemode", "id"),
    Index("ix_events_scope_object", "merchant_id", "livemode", "object_id", "id"),  # 0004
    Index("ix_events_scope_type", "merchant_id", "livemode", "type", "id"),  # 0004
)

# Double-entry ledger. An account belongs to (merchant or platform, mode, currency, kind).
ledger_accounts = Table(
    "ledger_accounts",
    metadata,
    Column("id", BIGINT_PK, primary_key=True, autoincrement=True),
    Column("merchant_id", String(ID)),  # null for platform accounts
    Column("livemode", Boolean, nullable=False),
    Column("currency", String(3), nullable=False),
    Column("kind", String(48), nullable=False),
    Column("created", BigInteger, nullable=False),
    UniqueConstraint("merchant_id", "livemode", "currency", "kind", name="uq_ledger_account"),
)

# An account's balance (debits minus credits) is the sum of its rows here (migration 0007):
# each transaction adds its postings to one slot, chosen at random, so concurrent payments of
# one merchant update different rows instead of queueing on one hot row (storage/ledger.py).
ledger_balances = Table(
    "ledger_balances",
    metadata,
    Column("account_id", BigInteger, ForeignKey("ledger_accounts.id"), primary_key=True),
    Column("slot", Integer, primary_key=True),
    Column("balance", BigInteger, nullable=False),
)

journals = Table(
    "journals",
    metadata,
    Column("id", String(ID), primary_key=True),  # jnl_
    Column("merchant_id", String(ID)),
    Column("livemode", Boolean, nullable=False),
    Column("kind", String(48), nullable=False),  # authorization, capture, release, refund, fee ...
    Column("reference_id", String(ID), nullable=False),  # the payment, refund ... that caused it
    Column("created", BigInteger, nullable=False),
    Index("ix_journals_reference", "reference_id"),
)

postings = Table(
    "postings",
    metadata,
    Column("id", BIGINT_PK, primary_key=True, autoincrement=True),
    Column("journal_id", String(ID), ForeignKey("journals.id"), nullable=False),
    Column("account_id", BigInteger, ForeignKey("ledger_accounts.id"), nullable=False),
    Column("currency", String(3), nullable=False),
    Column("amount", BigInteger, nullable=False),  # > 0 debit, < 0 credit
    # Covering (migration 0004): `ledger verify` sums per journal and per account from the
    # indexes alone, in order, with no sort.
    Index("ix_postings_journal_currency_amount", "journal_id", "currency", "amount"),
    Index("ix_postings_account_amount", "account_id", "amount"),
)

# Things a person must look at: a late acquirer answer for a payment already final, a voucher
# paid after it expired, a reconciliation mismatch.
review_items = Table(
    "review_items",
    metadata,
    Column("id", String(ID), primary_key=True),
    Column("merchant_id", String(ID)),
    Column("livemode", Boolean, nullable=False),
    Column("object_id", String(ID), nullable=False, index=True),
    Column("kind", String(64), nullable=False),
    Column("details", JSON, nullable=False),
    Column("status", String(16), nullable=False),  # open|resolved
    Column("created", BigInteger, nullable=False),
)

# The sandbox acquirer's own books: it is another system, so it keeps its own table and is
# idempotent by the reference we send (the attempt id). Lets tests count real "charges".
simulator_operations = Table(
    "simulator_operations",
    metadata,
    Column("reference", String(ID), primary_key=True),
    Column("operation", String(16), nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("currency", String(3), nullable=False),
    Column("result", JSON, nullable=False),
    Column("created", BigInteger, nullable=False),
)


# --- Webhooks (issue 4): endpoints, the transactional outbox, the delivery log ------------------
# A pending ``webhook_deliveries`` row is written in the same transaction as its event (the
# outbox); workers claim due rows (``status``, ``next_attempt_at``) with a lease
# (``locked_until``/``claimed_by``), send, and record each try in ``webhook_attempts``.

webhook_endpoints = Table(
    "webhook_endpoints",
    metadata,
    Column("id", String(ID), primary_key=True),  # we_
    Column("merchant_id", String(ID), nullable=False),
    Column("livemode", Boolean, nullable=False),
    Column("url", String(2048), nullable=False),
    Column("description", String(500)),
    Column("enabled_events", JSON, nullable=False),  # ["*"] or a list of event types
    Column("status", String(16), nullable=False),  # enabled | disabled
    Column("disabled_reason", String(32)),  # requested | endpoint_gone | failing
    # AES-GCM (SecretBox) of the JSON list [{"secret": "whsec_...", "expires_at": int|null}]:
    # the current secret and, after a rotation, the previous ones until they expire.
    Column("secrets_enc", Text, nullable=False),
    Column("failing_since", BigInteger),  # first failed attempt after the last success
    *_stamps(),
    Index("ix_webhook_endpoints_scope_id", "merchant_id", "livemode", "id"),
)

webhook_deliveries = Table(
    "webhook_deliveries",
    metadata,
    Column("id", String(ID), primary_key=True),  # whd_
    Column("event_id", String(ID), nullable=False),
    Column("endpoint_id", String(ID), nullable=False),
    Column("merchant_id", String(ID), nullable=False),
    Column("livemode", Boolean, nullable=False),
    Column("status", String(16), nullable=False),  # pending | succeeded | failed | canceled
    Column("attempt_count", Integer, nullable=False, server_default="0"),
    Column("next_attempt_at", BigInteger, nullable=False),
    Column("locked_until", BigInteger),  # a claim's lease: past it, another worker may take it
    Column("claimed_by", String(64)),  # the claim token of the worker that holds the lease
    Column("last_status_code", Integer),
    Column("last_error", String(500)),
    *_stamps(),
    Index("ix_webhook_deliveries_due", "status", "next_attempt_at"),
    Index("ix_webhook_deliveries_endpoint", "endpoint_id", "id"),
    Index("ix_webhook_deliveries_event", "event_id"),
)

webhook_attempts = Table(
    "webhook_attempts",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
           autoincrement=True),
    Column("delivery_id", String(ID), nullable=False),
    Column("endpoint_id", String(ID), nullable=False),
    Column("attempted_at", BigInteger, nullable=False),
    Column("status_code", Integer),
    Column("latency_ms", Integer, nullable=False),
    Column("error", String(500)),
    Column("response_excerpt", Text),  # at most 1 KiB of the receiver's answer
    Index("ix_webhook_attempts_delivery", "delivery_id", "id"),
)
