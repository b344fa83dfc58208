"""The peer: localstripe (a fake, stateful Stripe server in Python, from PyPI) doing the same
logical flows as OpenPSE, so the suite can print OpenPSE's figure beside it.

localstripe lives in its OWN virtual environment (``~/.cache/openpse-bench/localstripe-venv``,
or ``$OPENPSE_BENCH_CACHE/localstripe-venv``), created on demand with ``pip install
localstripe==LOCALSTRIPE_VERSION``; the project's venv never gets it. It speaks Stripe's API:
form-encoded bodies, ``Authorization: Bearer sk_test_...``. The flows:

- create+confirm: ``POST /v1/payment_intents`` ``amount, currency=jpy,
  payment_method=pm_card_visa, confirm=true`` (one request, like OpenPSE's ``confirm: true``;
  ``pm_card_visa`` is Stripe's test card 4242...);
- refund: ``POST /v1/refunds`` ``payment_intent=pi_..., amount=1``;
- get: ``GET /v1/payment_intents/{id}``.

localstripe keeps everything in one dict and pickles the whole of it to
``/tmp/localstripe.pickle`` after every write, so it slows down as its state grows; the suite
reports its rate over the first and the last fifth of the create+confirm phase.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from bench.servers import free_port, stop_process, tree_peak_rss_mb, wait_http_ok

__all__ = ["LOCALSTRIPE_VERSION", "LocalStripe", "ensure_venv", "venv_dir", "venv_ready"]

LOCALSTRIPE_VERSION: Final = "1.15.10"
API_KEY: Final = "sk_test_openpsebench0123456789"
PICKLE: Final = Path("/tmp/localstripe.pickle")  # where localstripe itself writes its state
INSTALL_TIMEOUT_S: Final = 600


def venv_dir() -> Path:
    base = os.environ.get("OPENPSE_BENCH_CACHE") or str(Path.home() / ".cache" / "openpse-bench")
    return Path(base) / "localstripe-venv"


def _exe() -> Path:
    return venv_dir() / "bin" / "localstripe"


def venv_ready() -> bool:
    return _exe().exists()


def _base_python() -> str:
    """The interpreter this venv was made from (a venv made from a venv python is fine too)."""
    return getattr(sys, "_base_executable", None) or sys.executable


def ensure_venv(log: Path | None = None) -> Path:
    """Create the venv and ``pip install localstripe`` into it (needs PyPI) unless present."""
    if venv_ready():
        return _exe()
    target = venv_dir()
    target.parent.mkdir(parents=True, exist_ok=True)
    out = open(log, "ab") if log else subprocess.DEVNULL
    try:
        subprocess.run([_base_python(), "-m", "venv", str(target)], check=True, stdout=out,
                       stderr=out, timeout=INSTALL_TIMEOUT_S)
        subprocess.run([str(target / "bin" / "python"), "-m", "pip", "install", "--quiet",
                        f"localstripe=={LOCALSTRIPE_VERSION}"], check=True, stdout=out,
                       stderr=out, timeout=INSTALL_TIMEOUT_S)
    finally:
        if log:
            out.close()  # type: ignore[union-attr]
    if not venv_ready():
        raise RuntimeError(f"localstripe did not install into {target}")
    return _exe()


@dataclass
class LocalStripe:
    """``localstripe --port P --from-scratch`` in its own process group."""

    log: Path
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    _had_pickle: bool = field(default=False)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> LocalStripe:
        self._had_pickle = PICKLE.exists()
        self.port = free_port()
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([str(_exe()), "--port", str(self.port), "--from-scratch"],
                                         stdout=subprocess.DEVNULL, stderr=log,
                                         start_new_session=True)
        # an unauthenticated page localstripe serves
        wait_http_ok(self.base_url + "/js.stripe.com/v3/", self.proc, log=self.log)
        return self

    def peak_rss_mb(self) -> float:
        return tree_peak_rss_mb(self.pid)

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None
        if not self._had_pickle:
            PICKLE.unlink(missing_ok=True)
