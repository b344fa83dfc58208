"""indexes for 1M-row tables: filtered newest-first lists (payments by status and order id,
events by type and object), covering postings indexes for `ledger verify`

Each list filter gets an index (merchant_id, livemode, <filter>, id) so the filter and the
newest-first order come from one index: without it SQLite (which has no statistics) walks the
merchant's whole history by id looking for matches, and PostgreSQL does the same or a
sequential scan once the filter is rare. ``ix_payments_scope_order`` and ``ix_events_object``
are replaced (their columns lead the new ones); the postings indexes become covering.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25 09:00:00
"""
from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_payments_scope_order_id", "payments",
                    ["merchant_id", "livemode", "merchant_order_id", "id"], unique=False)
    op.drop_index("ix_payments_scope_order", table_name="payments")
    op.create_index("ix_payments_scope_status", "payments",
                    ["merchant_id", "livemode", "status", "id"], unique=False)

    op.create_index("ix_events_scope_object", "events",
                    ["merchant_id", "livemode", "object_id", "id"], unique=False)
    op.drop_index("ix_events_object", table_name="events")
    op.create_index("ix_events_scope_type", "events",
                    ["merchant_id", "livemode", "type", "id"], unique=False)

    op.create_index("ix_postings_journal_currency_amount", "postings",
                    ["journal_id", "currency", "amount"], unique=False)
    op.drop_index("ix_postings_journal_id", table_name="postings")
    op.create_index("ix_postings_account_amount", "postings", ["account_id", "amount"],
                    unique=False)
    op.drop_index("ix_postings_account_id", table_name="postings")


def downgrade() -> None:
    op.create_index("ix_postings_account_id", "postings", ["account_id"], unique=False)
    op.drop_index("ix_postings_account_amount", table_name="postings")
    op.create_index("ix_postings_journal_id", "postings", ["journal_id"], unique=False)
    op.drop_index("ix_postings_journal_currency_amount", table_name="postings")

    op.drop_index("ix_events_scope_type", table_name="events")
    op.create_index("ix_events_object", "events", ["object_id"], unique=False)
    op.drop_index("ix_events_scope_object", table_name="events")

    op.drop_index("ix_payments_scope_status", table_name="payments")
    op.create_index("ix_payments_scope_order", "payments",
                    ["merchant_id", "livemode", "merchant_order_id"], unique=False)
    op.drop_index("ix_payments_scope_order_id", table_name="payments")
