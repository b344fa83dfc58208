"""The delivery engine: claim due deliveries, send them concurrently, record what happened.

``DeliveryRunner.run_once(now_s)`` is one step of a pipeline that keeps up to
``max_in_flight`` attempts on the wire (at most ``max_per_endpoint`` to any one endpoint):

1. in one transaction, record the attempts that finished since the last step (attempt rows,
   delivery states, endpoint health, endpoints to disable) and claim due deliveries
   (``outbox.claim_due``, with a lease): up to ``QUEUE_FACTOR`` times what can run at once, so
   that a slot freed while the database is busy is refilled at once from the local queue;
2. start an attempt for each that has a free slot (one of a few shared ``WebhookSender``s:
   pooled connections, SSRF check and address pinning at send time, 15 s total timeout,
   capped read, no redirects); a finished attempt starts the next queued one;
3. wait until half of what is held has finished, or ``linger_s``.

Attempts still running when a step returns (a slow receiver) carry on and are recorded by a
later step, so one slow endpoint never holds up the others. The body sent is the event's stored
payload, byte for byte; ``webhook-id`` is the event id, so a re-send (a retry, a redelivery, a
lease that ran out after a crash) carries the same id. ``webhook-timestamp`` is the wall clock
at send time; ``now_s`` is the scheduling clock (retries, secret expiry, claims), which tests
may move forward.

A runner is one worker's state; any number of runners (processes) may share a database.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import secrets as _secrets
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from random import Random

from openpse.crypto import DecryptionFailed, SecretBox
from openpse.logs import get_logger
from openpse.storage.db import Database, Tx
from openpse.webhooks import metrics
from openpse.webhooks.keyring import SecretEntry, active_secrets, open_keyring
from openpse.webhooks.outbox import (
    ClaimedDelivery,
    Outcome,
    RecordSummary,
    claim_due,
    queue_stats,
    record_outcomes,
)
from openpse.webhooks.schedule import UniformRandom
from openpse.webhooks.sender import DELIVERY_TIMEOUT_S, AttemptResult, WebhookSender
from openpse.webhooks.signing import headers_for

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_LEASE_S",
    "DEFAULT_MAX_IN_FLIGHT",
    "DEFAULT_MAX_PER_ENDPOINT",
    "DeliveryOptions",
    "DeliveryRunner",
    "DisableHook",
]

DEFAULT_BATCH_SIZE = 200
DEFAULT_MAX_IN_FLIGHT = 100
# Parallel attempts to one endpoint per worker: the sender keeps 20 idle connections, and a
# merchant's receiver should not see a flood of parallel requests from one worker.
DEFAULT_MAX_PER_ENDPOINT = 20
# A claim outlives the longest wait in the local queue plus the longest attempt (2 x 15 s) and
# the time to record it, with a wide margin: a lease that ran out while its attempt was still
# running would send the delivery twice.
DEFAULT_LEASE_S = 60
DEFAULT_LINGER_S = 0.25
# A worker claims up to this many times what it can run at once (per endpoint and in all), so
# the next attempts are ready when a slot frees up, without waiting for the database. A queued
# delivery waits for at most one attempt ahead of it, so with attempts cut at a third of the
# lease it is sent and recorded well inside its claim.
QUEUE_FACTOR = 2
QUEUE_GAUGES_EVERY_S = 5.0
KEYRING_CACHE_ENTRIES = 1024
MAX_ROUNDS_UNTIL_IDLE = 100_000
DRAIN_TIMEOUT_S = 10.0

DisableHook = Callable[[Tx, str, str, int], Awaitable[None]]
"""``(tx, endpoint_id, reason, now_s)``: disable the endpoint and record its event, in ``tx``."""

log = get_logger("openpse.webhooks")


@dataclass(frozen=True, slots=True)
class DeliveryOptions:
    batch_size: int = DEFAULT_BATCH_SIZE
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT
    max_per_endpoint: int = DEFAULT_MAX_PER_ENDPOINT
    lease_s: int = DEFAULT_LEASE_S
    linger_s: float = DEFAULT_LINGER_S

    def __post_init__(self) -> None:
        if not 1 <= self.batch_size <= 10_000:
            raise ValueError("batch_size must be in [1, 10000]")
        if not 1 <= self.max_in_flight <= 10_000:
            raise ValueError("max_in_flight must be in [1, 10000]")
        if not 1 <= self.max_per_endpoint <= self.max_in_flight:
            raise ValueError("max_per_endpoint must be in [1, max_in_flight]")
        if not 3 <= self.lease_s <= 3600:
            raise ValueError("lease_s must be in [3, 3600]")
        if not 0 < self.linger_s <= 60:
            raise ValueError("linger_s must be in (0, 60]")

    @property
    def attempt_timeout_s(self) -> float:
        """At most the contract's 15 s, and a third of the lease (see ``QUEUE_FACTOR``)."""
        return min(DELIVERY_TIMEOUT_S, self.lease_s / 3)


class DeliveryRunner:
    """One worker's delivery pipeline. ``close()`` when done (cancels what is in flight)."""

    def __init__(
        self,
        db: Database,
        box: SecretBox,
        *,
        allow_local: bool,
        on_disable: DisableHook,
        options: DeliveryOptions | None = None,
        sender: WebhookSender | None = None,
        rng: UniformRandom | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.options = options or DeliveryOptions()
        self._db = db
        self._box = box
        self._allow_local = allow_local
        self._on_disable = on_disable
        self._sender_given = sender
        self._own_sender: WebhookSender | None = None
        self._rng: UniformRandom = rng or Random()  # jitter, not a secret
        self._clock = clock
        self._worker_id = _secrets.token_hex(8)
        self._rounds = 0
        self._tasks: set[asyncio.Task[Outcome]] = set()
        # Claimed and not yet finished, per endpoint: running plus queued for a free slot.
        self._held: Counter[str] = Counter()
        self._running: Counter[str] = Counter()
        self._queued: dict[str, deque[tuple[ClaimedDelivery, int]]] = {}
        self._finished: list[Outcome] = []
        self._wake = asyncio.Event()
        self._want = 0
        self._keyrings: dict[tuple[str, str], list[SecretEntry]] = {}
        self._gauges_due_s = 0.0
        self._draining = False

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    async def run_once(self, now_s: int) -> int:
        """One pipeline step; returns attempts recorded plus deliveries claimed (0: idle)."""
        finished, self._finished = self._finished, []
        o = self.options
        room = min(o.batch_size, QUEUE_FACTOR * o.max_in_flight - sum(self._held.values()))
        if self._draining:
            room = 0
        self._rounds += 1
        claimed: list[ClaimedDelivery] = []
        try:
            async with self._db.transaction() as tx:
                summary = await self._record(tx, finished)
                if room > 0:
                    claimed = await claim_due(
                        tx, now_s=now_s, limit=room, lease_s=o.lease_s,
                        token=f"{self._worker_id}:{self._rounds}",
                        max_per_endpoint=QUEUE_FACTOR * o.max_per_endpoint,
                        in_flight=self._held)
        except Exception:
            # Kept for the next step while their claims last; past that, another worker may
            # have re-sent them and recording is pointless (the token no longer matches).
            self._finished = [x for x in finished if x.sent_at_s + o.lease_s > now_s] + \
                self._finished
            raise
        self._observe(finished, summary)
        for delivery in claimed:
            self._held[delivery.endpoint_id] += 1
            self._queued.setdefault(delivery.endpoint_id, deque()).append((delivery, now_s))
        self._start_queued()
        held = sum(self._held.values())
        if held:
            await self._wait_for(max(1, held // 2))
        await self._publish_queue(now_s)
        return len(finished) + len(claimed)

    async def run_until_idle(self, now_s: int) -> int:
        """Steps until nothing is due or in flight (tests, benchmarks); returns the work done."""
        total = 0
        for _ in range(MAX_ROUNDS_UNTIL_IDLE):
            done = await self.run_once(now_s)
            total += done
            if done == 0 and not self._held and not self._finished:
                return total
        raise RuntimeError("delivery did not become idle")

    async def drain(self, now_s: int, *, timeout_s: float = DRAIN_TIMEOUT_S) -> None:
        """Graceful stop: claim nothing more, let attempts on the wire finish and record their
        results (bounded by ``timeout_s``). Deliveries claimed but not started are dropped;
        their leases run out and another worker sends them."""
        self._draining = True
        for endpoint_id, waiting in list(self._queued.items()):
            self._held[endpoint_id] -= len(waiting)
        self._queued.clear()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout_s)
        if not self._tasks:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.run_once(now_s), timeout_s)  # record the results
        await self.close()

    async def close(self) -> None:
        """Stop: running attempts are cancelled, queued ones dropped (their leases run out)."""
        self._queued.clear()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._own_sender is not None:
            await self._own_sender.close()
            self._own_sender = None

    # --- steps -----------------------------------------------------------------------------------

    def _start_queued(self) -> None:
        """Start queued deliveries while slots are free (per endpoint and in all)."""
        o = self.options
        for endpoint_id in list(self._queued):
            waiting = self._queued[endpoint_id]
            while (waiting and len(self._tasks) < o.max_in_flight
                   and self._running[endpoint_id] < o.max_per_endpoint):
                delivery, now_s = waiting.popleft()
                self._spawn(delivery, now_s)
            if not waiting:
                del self._queued[endpoint_id]
            if len(self._tasks) >= o.max_in_flight:
                return

    def _spawn(self, delivery: ClaimedDelivery, now_s: int) -> None:
        task = asyncio.get_running_loop().create_task(self._attempt(delivery, now_s))
        self._tasks.add(task)
        self._running[delivery.endpoint_id] += 1
        task.add_done_callback(functools.partial(self._on_done, delivery.endpoint_id))

    def _on_done(self, endpoint_id: str, task: asyncio.Task[Outcome]) -> None:
        self._tasks.discard(task)
        for counter in (self._running, self._held):
            counter[endpoint_id] -= 1
            if counter[endpoint_id] <= 0:
                del counter[endpoint_id]
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:  # a bug, not the receiver: the lease runs out and it is sent again
            log.error("webhook attempt crashed", error=repr(exc))
        else:
            self._finished.append(task.result())
        self._start_queued()
        if len(self._finished) >= self._want or not self._held:
            self._wake.set()

    async def _wait_for(self, count: int) -> None:
        if len(self._finished) >= count:
            return
        self._want = count
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), self.options.linger_s)

    async def _attempt(self, delivery: ClaimedDelivery, now_s: int) -> Outcome:
        sender = self._sender()
        try:
            signing_secrets = active_secrets(self._keyring(delivery), now_s=now_s)
        except DecryptionFailed:
            result = AttemptResult(
                ok=False, status_code=None, latency_ms=0, response_excerpt="",
                retry_after_s=None, gone=False,
                error="secret_unavailable: the endpoint's secret does not decrypt with the "
                      "loaded master keys")
            return Outcome(delivery, result, now_s)
        body = delivery.payload.encode()
        headers = headers_for(signing_secrets, delivery.event_id, int(self._clock()), body)
        result = await sender.send(delivery.url, body, headers, livemode=delivery.livemode,
                                   allow_local=self._allow_local)
        return Outcome(delivery, result, now_s)

    def _sender(self) -> WebhookSender:
        """The sender given, else one of this runner's own, made on first use (in its loop)."""
        if self._sender_given is not None:
            return self._sender_given
        if self._own_sender is None:
            self._own_sender = WebhookSender(timeout_s=self.options.attempt_timeout_s,
                                             max_connections=self.options.max_in_flight)
        return self._own_sender

    def _keyring(self, delivery: ClaimedDelivery) -> list[SecretEntry]:
        key = (delivery.endpoint_id, delivery.secrets_enc)
        entries = self._keyrings.get(key)
        if entries is None:
            if len(self._keyrings) >= KEYRING_CACHE_ENTRIES:
                self._keyrings.clear()
            entries = open_keyring(self._box, delivery.endpoint_id, delivery.secrets_enc)
            self._keyrings[key] = entries
        return entries

    async def _record(self, tx: Tx, finished: list[Outcome]) -> RecordSummary:
        """Store finished attempts and their consequences (in the step's transaction)."""
        summary = await record_outcomes(tx, finished, rng=self._rng)
        if summary.disable:
            now_s = max(o.finished_at_s for o in finished)
            for endpoint_id, reason in sorted(summary.disable.items()):
                await self._on_disable(tx, endpoint_id, reason, now_s)
        return summary

    def _observe(self, finished: list[Outcome], summary: RecordSummary) -> None:
        for label, count in summary.outcomes.items():
            metrics.OUTCOMES.labels(label).inc(count)
        for o in finished:
            metrics.ATTEMPT_DURATION.observe(o.result.latency_ms / 1000)
            if o.result.ok:
                metrics.DELIVERY_LAG.observe(max(0, o.finished_at_s - o.delivery.created))
        for endpoint_id, reason in summary.disable.items():
            log.warning("webhook endpoint disabled", endpoint=endpoint_id, reason=reason)

    async def _publish_queue(self, now_s: int) -> None:
        if time.monotonic() < self._gauges_due_s:
            return
        self._gauges_due_s = time.monotonic() + QUEUE_GAUGES_EVERY_S
        try:
            async with self._db.read() as conn:
                snapshot = await queue_stats(conn, now_s=now_s,
                                             limit=metrics.MAX_ENDPOINT_SERIES)
        except Exception as exc:  # metrics never stop delivery
            log.warning("webhook queue metrics unavailable", error=repr(exc))
            return
        metrics.publish_queue(snapshot, now_s=now_s)
