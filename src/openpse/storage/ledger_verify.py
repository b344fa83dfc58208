"""``openpse ledger verify``: recompute the books in SQL and list what does not add up.

Checks (each one statement, so each sees one consistent snapshot even while payments are
being written):

1. every journal balances per currency (postings grouped by journal and currency);
2. every journal has postings;
3. every account's balance (the sum of its slots in ``ledger_balances``) equals the sum of its
   postings;
4. all accounts together sum to zero per (mode, currency).

At a million journals this takes ~2 s of queries on either backend (issue 7 budget: 10 s):

- The per-journal pass reads the covering index ``ix_postings_journal_currency_amount``
  (migration 0004) in order: no sort, no table access. Before it, SQLite sorted all postings
  in a temporary B-tree and PostgreSQL sorted and read the heap.
- "No postings" is a ``NOT EXISTS`` anti-join (PostgreSQL: a merge anti-join of two indexes;
  SQLite: one index probe per journal). It was ``NOT IN (SELECT DISTINCT ...)``, which
  PostgreSQL runs as a nested scan of the whole subquery per journal once the subquery no
  longer fits in ``work_mem`` (quadratic: it hit the 30 s statement timeout at 200,000
  journals).
- The per-account sums read the covering index ``ix_postings_account_amount``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import exists, func, select

from openpse.storage.db import Tx
from openpse.storage.ledger import account_balances
from openpse.storage.tables import journals, ledger_accounts, postings

__all__ = ["MAX_PROBLEMS_LISTED", "VerifyReport", "verify_ledger"]

MAX_PROBLEMS_LISTED = 50


@dataclass
class VerifyReport:
    journals: int = 0
    postings: int = 0
    accounts: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "journals": self.journals,
            "postings": self.postings,
            "accounts": self.accounts,
            "problems": self.problems,
        }


async def verify_ledger(conn: Tx) -> VerifyReport:
    """Every journal balances per currency and has postings; every account's balance equals
    the sum of its postings; all accounts together sum to zero per (mode, currency). At most
    ``MAX_PROBLEMS_LISTED`` problems of each kind are listed. Aggregates run in SQL."""
    rep = VerifyReport()
    counts = (
        await conn.execute(
            select(
                select(func.count()).select_from(journals).scalar_subquery(),
                select(func.count()).select_from(postings).scalar_subquery(),
                select(func.count()).select_from(ledger_accounts).scalar_subquery(),
            )
        )
    ).one()
    rep.journals, rep.postings, rep.accounts = (int(c) for c in counts)

    unbalanced = (
        await conn.execute(
            select(postings.c.journal_id, postings.c.currency, func.sum(postings.c.amount))
            .group_by(postings.c.journal_id, postings.c.currency)
            .having(func.sum(postings.c.amount) != 0)
            .limit(MAX_PROBLEMS_LISTED)
        )
    ).all()
    rep.problems += [f"journal {j} does not balance in {c}: {s}" for j, c, s in unbalanced]

    empty = (
        await conn.execute(
            select(journals.c.id)
            # Selects the indexed column (not ``*``) so SQLite probes the index alone.
            .where(~exists(select(postings.c.journal_id)
                           .where(postings.c.journal_id == journals.c.id)))
            .limit(MAX_PROBLEMS_LISTED)
        )
    ).all()
    rep.problems += [f"journal {r.id} has no postings" for r in empty]

    sums = (
        select(postings.c.account_id, func.sum(postings.c.amount).label("s"))
        .group_by(postings.c.account_id)
        .subquery()
    )
    bal = account_balances()
    balance = func.coalesce(bal.c.balance, 0)
    drift = (
        await conn.execute(
            select(ledger_accounts.c.id, balance, sums.c.s)
            .select_from(ledger_accounts
                         .outerjoin(bal, bal.c.account_id == ledger_accounts.c.id)
                         .outerjoin(sums, sums.c.account_id == ledger_accounts.c.id))
            .where(balance != func.coalesce(sums.c.s, 0))
            .limit(MAX_PROBLEMS_LISTED)
        )
    ).all()
    rep.problems += [f"account {a} balance {b} != sum of postings {s or 0}" for a, b, s in drift]

    totals = (
        await conn.execute(
            select(
                ledger_accounts.c.livemode,
                ledger_accounts.c.currency,
                func.sum(bal.c.balance),
            )
            .select_from(ledger_accounts.join(bal, bal.c.account_id == ledger_accounts.c.id))
            .group_by(ledger_accounts.c.livemode, ledger_accounts.c.currency)
            .having(func.sum(bal.c.balance) != 0)
        )
    ).all()
    rep.problems += [
        f"accounts ({'live' if m else 'test'}, {c}) sum to {s}, not zero" for m, c, s in totals
    ]
    return rep
