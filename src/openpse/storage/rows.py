"""Small helpers shared by the repositories: row -> dict, time formatting, list pages."""

from __future__ import annotations

from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from sqlalchemy import Table

from openpse.domain.ids import PREFIXES, first_id_at

__all__ = ["page_bounds", "page_result", "rfc3339", "row_dict"]

MAX_PAGE_SIZE = 100
DEFAULT_PAGE_SIZE = 20

# A row's id is made from the wall clock of the process that wrote it, within the same moment as
# its ``created`` (ids.py). A ``created`` range therefore also bounds the ids, which lets the
# list read the (merchant, mode, id) index from the range's end instead of walking the whole
# history down to it. The bound is widened by a day on each side so that a transaction waiting
# on a lock, skew between hosts or a clock stepped back (a process keeps its ids increasing, so
# they run ahead of ``created`` until the clock catches up) cannot move a row out of it.
ID_BOUND_SLACK_S = 86400
_ID_PREFIX = {table: PREFIXES[kind] for table, kind in (
    ("payments", "payment"), ("events", "event"), ("refunds", "refund"),
    ("checkout_sessions", "checkout_session"), ("webhook_endpoints", "webhook_endpoint"),
    ("webhook_deliveries", "delivery"), ("request_logs", "request"))}


def rfc3339(ts: int | None) -> str | None:
    if ts is None:
        return None
    return _rfc3339(ts)


@lru_cache(maxsize=4096)
def _rfc3339(ts: int) -> str:
    # A payment's views and events format the same few seconds many times over (≈ 2 % of a
    # create+confirm's CPU before this cache).
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def row_dict(row: Any) -> dict[str, Any]:
    return dict(row._mapping)


def page_bounds(
    table: Table, *, cursor: str | None, created_gte: int | None, created_lt: int | None
) -> list[tuple[str, str, Any]]:
    """A list page's bounds as (column, ``<`` or ``>=``, value): after ``cursor`` (the last id
    of the prior page) and within the ``created`` range, which also bounds the ids."""
    bounds: list[tuple[str, str, Any]] = []
    if cursor is not None:
        bounds.append(("id", "<", cursor))
    prefix = _ID_PREFIX.get(table.name)
    if created_gte is not None:
        bounds.append(("created", ">=", created_gte))
        if prefix is not None:
            bounds.append(("id", ">=", first_id_at(prefix,
                                                   (created_gte - ID_BOUND_SLACK_S) * 1000)))
    if created_lt is not None:
        bounds.append(("created", "<", created_lt))
        if prefix is not None:
            bounds.append(("id", "<", first_id_at(prefix,
                                                  (created_lt + ID_BOUND_SLACK_S) * 1000)))
    return bounds


def page_result(items: list[dict[str, Any]], limit: int) -> dict[str, Any]:
    has_more = len(items) > limit
    data = items[:limit]
    return {
        "object": "list",
        "data": data,
        "has_more": has_more,
        "next_cursor": data[-1]["id"] if has_more and data else None,
    }
