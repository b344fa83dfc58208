"""an account's balance is spread over slot rows (ledger_balances), not one hot row

Every payment of a merchant added its postings to the same three ``ledger_accounts`` rows, so
concurrent payments queued on those rows' locks until each other's commit, and each update
walked the rows' growing chain of versions. Each transaction now adds to one of 64 slots of
each account it touches (an upsert); the balance is the sum of the slots. Existing balances
move to slot 0.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07 04:00:00
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ledger_balances",
        sa.Column("account_id", sa.BigInteger(), nullable=False),
        sa.Column("slot", sa.Integer(), nullable=False),
        sa.Column("balance", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["account_id"], ["ledger_accounts.id"],
                                name=op.f("fk_ledger_balances_account_id_ledger_accounts")),
        sa.PrimaryKeyConstraint("account_id", "slot", name=op.f("pk_ledger_balances")),
    )
    op.execute("INSERT INTO ledger_balances (account_id, slot, balance) "
               "SELECT id, 0, balance FROM ledger_accounts WHERE balance <> 0")
    # Both backends drop a plain column in place (SQLite since 3.35), no table rebuild.
    op.execute("ALTER TABLE ledger_accounts DROP COLUMN balance")


def downgrade() -> None:
    op.add_column("ledger_accounts", sa.Column("balance", sa.BigInteger(), server_default="0",
                                               nullable=False))
    op.execute("UPDATE ledger_accounts SET balance = COALESCE((SELECT SUM(b.balance) "
               "FROM ledger_balances b WHERE b.account_id = ledger_accounts.id), 0)")
    op.drop_table("ledger_balances")
