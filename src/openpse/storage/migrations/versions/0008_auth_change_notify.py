"""PostgreSQL: a change to an access key or a merchant is announced on channel openpse_auth

Each API process keeps the access keys it has read (with their merchant's status and terms)
and drops one as soon as it hears that it changed (``storage/key_cache.py``), whichever
process, CLI or hand-written SQL changed it: these triggers send the notification, at commit,
as part of the changing transaction. ``<table>:<id>`` for a row, ``<table>:*`` for a TRUNCATE.
SQLite has no notifications (and no round trip to save): nothing to do there.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-08 00:30:00
"""
from __future__ import annotations

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

TABLES = ("access_keys", "merchants")


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("""
        CREATE FUNCTION openpse_auth_changed() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF TG_OP = 'TRUNCATE' THEN
                PERFORM pg_notify('openpse_auth', TG_TABLE_NAME || ':*');
            ELSIF TG_OP = 'DELETE' THEN
                PERFORM pg_notify('openpse_auth', TG_TABLE_NAME || ':' || OLD.id);
            ELSE
                PERFORM pg_notify('openpse_auth', TG_TABLE_NAME || ':' || NEW.id);
            END IF;
            RETURN NULL;
        END $$""")
    for table in TABLES:
        op.execute(f"CREATE TRIGGER {table}_auth_changed AFTER UPDATE OR DELETE ON {table} "
                   "FOR EACH ROW EXECUTE FUNCTION openpse_auth_changed()")
        op.execute(f"CREATE TRIGGER {table}_auth_truncated AFTER TRUNCATE ON {table} "
                   "FOR EACH STATEMENT EXECUTE FUNCTION openpse_auth_changed()")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table in TABLES:
        op.execute(f"DROP TRIGGER IF EXISTS {table}_auth_truncated ON {table}")
        op.execute(f"DROP TRIGGER IF EXISTS {table}_auth_changed ON {table}")
    op.execute("DROP FUNCTION IF EXISTS openpse_auth_changed()")
