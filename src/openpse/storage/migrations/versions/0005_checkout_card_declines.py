"""checkout sessions count their declined card payments (the hosted page stops taking cards
after ``MAX_CARD_DECLINES``: card testing through one payment link)

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06 20:00:00
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("checkout_sessions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("card_declines", sa.Integer(), server_default="0",
                                      nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("checkout_sessions", schema=None) as batch_op:
        batch_op.drop_column("card_declines")
