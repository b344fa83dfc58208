"""partial indexes for the jobs' scans: payments by expiry and settlement deadline hold only
payments that have one, pending acquirer attempts only while pending

A card payment has neither deadline, and an attempt is pending for milliseconds; with full
indexes every payment insert and status change (never a HOT update: status is indexed) wrote
entries into all three. The jobs' queries name the predicates (``expires_at IS NOT NULL``,
``settles_at IS NOT NULL``, ``status = 'pending'``), so both PostgreSQL and SQLite use the
partial indexes for them.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06 21:00:00
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def _partial(name: str, table: str, columns: list[str], where: str) -> None:
    op.create_index(name, table, columns, postgresql_where=sa.text(where),
                    sqlite_where=sa.text(where))


def upgrade() -> None:
    op.drop_index("ix_payments_status_expires", table_name="payments")
    _partial("ix_payments_status_expires", "payments", ["status", "expires_at"],
             "expires_at IS NOT NULL")
    op.drop_index("ix_payments_status_settles", table_name="payments")
    _partial("ix_payments_status_settles", "payments", ["status", "settles_at"],
             "settles_at IS NOT NULL")
    op.drop_index("ix_attempts_status_created", table_name="payment_attempts")
    _partial("ix_attempts_pending_created", "payment_attempts", ["created"],
             "status = 'pending'")


def downgrade() -> None:
    op.drop_index("ix_attempts_pending_created", table_name="payment_attempts")
    op.create_index("ix_attempts_status_created", "payment_attempts", ["status", "created"])
    op.drop_index("ix_payments_status_settles", table_name="payments")
    op.create_index("ix_payments_status_settles", "payments", ["status", "settles_at"])
    op.drop_index("ix_payments_status_expires", table_name="payments")
    op.create_index("ix_payments_status_expires", "payments", ["status", "expires_at"])
