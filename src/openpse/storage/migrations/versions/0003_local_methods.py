"""local payment methods: over-payments, settlement and expiry-warning times, the encrypted
method secret (a debit's IBAN); refund source and payout time

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24 09:00:00
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("payments", schema=None) as batch_op:
        batch_op.add_column(sa.Column("amount_overpaid", sa.BigInteger(), server_default="0",
                                      nullable=False))
        batch_op.add_column(sa.Column("amount_overpaid_refunded", sa.BigInteger(),
                                      server_default="0", nullable=False))
        batch_op.add_column(sa.Column("settles_at", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("expiry_warned_at", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("payment_method_enc", sa.Text(), nullable=True))
        batch_op.create_index("ix_payments_status_settles", ["status", "settles_at"],
                              unique=False)
    with op.batch_alter_table("refunds", schema=None) as batch_op:
        batch_op.add_column(sa.Column("source", sa.String(length=16), server_default="payment",
                                      nullable=False))
        batch_op.add_column(sa.Column("completes_at", sa.BigInteger(), nullable=True))
        batch_op.create_index("ix_refunds_status_completes", ["status", "completes_at"],
                              unique=False)


def downgrade() -> None:
    with op.batch_alter_table("refunds", schema=None) as batch_op:
        batch_op.drop_index("ix_refunds_status_completes")
        batch_op.drop_column("completes_at")
        batch_op.drop_column("source")
    with op.batch_alter_table("payments", schema=None) as batch_op:
        batch_op.drop_index("ix_payments_status_settles")
        batch_op.drop_column("payment_method_enc")
        batch_op.drop_column("expiry_warned_at")
        batch_op.drop_column("settles_at")
        batch_op.drop_column("amount_overpaid_refunded")
        batch_op.drop_column("amount_overpaid")
