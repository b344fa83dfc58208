"""The webhook delivery job, wired for the worker (``openpse.worker.feature_jobs``).

The engine lives in ``openpse.webhooks.delivery``; this module gives it the database, the
secret box, the SSRF policy of this server and the hook that disables an endpoint (which needs
``record_event``, a service). Importing it also registers the outbox sink (via
``openpse.services.webhook_endpoints``), so a worker process queues deliveries for the events
its other jobs record.

Tuning (environment, all optional):

- ``OPENPSE_WEBHOOK_CLAIM_LEASE_S`` (default 60): how long a claimed delivery is held before
  another worker may take it over; a worker killed mid-send delays its deliveries by at most
  this. Attempts are cut at a third of the lease (and at 15 s), so a lease never runs out under
  a live attempt. Lower it only for tests.
- ``OPENPSE_WEBHOOK_MAX_IN_FLIGHT`` (default 100): concurrent attempts per worker.
- ``OPENPSE_WEBHOOK_MAX_PER_ENDPOINT`` (default 20): concurrent attempts to one endpoint.
- ``OPENPSE_WEBHOOK_BATCH_SIZE`` (default 200): most deliveries claimed per step.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from openpse.services.context import Services
from openpse.services.webhook_endpoints import disable_endpoint
from openpse.webhooks.delivery import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_LEASE_S,
    DEFAULT_MAX_IN_FLIGHT,
    DEFAULT_MAX_PER_ENDPOINT,
    DeliveryOptions,
    DeliveryRunner,
)

__all__ = ["DeliveryTuning", "build_runner", "jobs"]


class DeliveryTuning(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="OPENPSE_WEBHOOK_", extra="ignore")

    claim_lease_s: int = Field(default=DEFAULT_LEASE_S, ge=3, le=3600)
    max_in_flight: int = Field(default=DEFAULT_MAX_IN_FLIGHT, ge=1, le=10_000)
    max_per_endpoint: int = Field(default=DEFAULT_MAX_PER_ENDPOINT, ge=1, le=10_000)
    batch_size: int = Field(default=DEFAULT_BATCH_SIZE, ge=1, le=10_000)

    def options(self) -> DeliveryOptions:
        return DeliveryOptions(batch_size=self.batch_size, max_in_flight=self.max_in_flight,
                               max_per_endpoint=min(self.max_per_endpoint, self.max_in_flight),
                               lease_s=self.claim_lease_s)


def build_runner(svc: Services, *, options: DeliveryOptions | None = None,
                 **kwargs: Any) -> DeliveryRunner:
    """A delivery runner for this server's database and policy (``kwargs``: test seams)."""
    allow_local = svc.settings.allow_local_webhooks and not svc.settings.livemode_server
    return DeliveryRunner(svc.db, svc.secrets, allow_local=allow_local,
                          on_disable=disable_endpoint,
                          options=options or DeliveryTuning().options(), **kwargs)


def jobs(svc: Services) -> dict[str, Any]:
    runner = build_runner(svc)

    async def deliver_webhooks(now_s: int) -> int:
        return await runner.run_once(now_s)

    async def drain() -> None:
        import time

        await runner.drain(int(time.time()))

    deliver_webhooks.aclose = drain  # type: ignore[attr-defined]  # the worker calls it on stop
    return {"webhook_delivery": deliver_webhooks}
