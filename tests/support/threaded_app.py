"""An ASGI app served by uvicorn on 127.0.0.1 in a thread of its own, for tests that need a
real HTTP server next to ``openpse serve`` (a flaky proxy, the example shop)."""

from __future__ import annotations

import threading
import time
from typing import Any

import uvicorn

from tests.support.servers import free_port

__all__ = ["ThreadedApp"]

STARTUP_TIMEOUT_S = 10.0


class ThreadedApp:
    """``with ThreadedApp(app) as served: served.url``."""

    def __init__(self, app: Any, port: int = 0) -> None:
        self.port = port or free_port()
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                lifespan="auto", access_log=False)
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ThreadedApp:
        self._thread.start()
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not self.server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError(f"the app on port {self.port} did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self._thread.join(10)
