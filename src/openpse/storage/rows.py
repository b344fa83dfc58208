"""Small helpers shared by the repositories: row -> dict, time formatting, list pages."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Select, Table

__all__ = ["apply_page", "page_result", "rfc3339", "row_dict"]

MAX_PAGE_SIZE = 100
DEFAULT_PAGE_SIZE = 20


def rfc3339(ts: int | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def row_dict(row: Any) -> dict[str, Any]:
    return dict(row._mapping)


def apply_page(
    stmt: Select[Any],
    table: Table,
    *,
    limit: int,
    cursor: str | None,
    created_gte: int | None,
    created_lt: int | None,
) -> Select[Any]:
    """Newest first by id (ids are time-ordered); ``cursor`` is the last id of the prior page."""
    if cursor is not None:
        stmt = stmt.where(table.c.id < cursor)
    if created_gte is not None:
        stmt = stmt.where(table.c.created >= created_gte)
    if created_lt is not None:
        stmt = stmt.where(table.c.created < created_lt)
    return stmt.order_by(table.c.id.desc()).limit(limit + 1)


def page_result(items: list[dict[str, Any]], limit: int) -> dict[str, Any]:
    has_more = len(items) > limit
    data = items[:limit]
    return {
        "object": "list",
        "data": data,
        "has_more": has_more,
        "next_cursor": data[-1]["id"] if has_more and data else None,
    }
