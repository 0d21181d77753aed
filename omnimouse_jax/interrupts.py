"""SIGINT and SIGTERM, honoured from process start, and the exit codes an interrupted command ends with.

Until a training loop runs (imports, opening the store, compiling) a signal raises `Interrupted` at once: nothing is
lost that a checkpoint could keep. Inside the loop (`StopRequest.deferring`) it only records the request; the loop
finishes its step, saves a checkpoint and returns, and then the command still ends with `Interrupted`. Either way the
process exits 128 + the signal's number (130 for SIGINT, 143 for SIGTERM), so `train ... && evaluate ...` and a
scheduler's requeue logic see an unfinished run. The handler is installed even where the parent shell ignores SIGINT
(a background job), so a run can always be stopped.
"""
from __future__ import annotations

import contextlib
import dataclasses
import signal
import threading
from collections.abc import Iterator

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """A command stopped by a signal; `exit_code` is 128 + the signal's number."""

    def __init__(self, signum: int):
        super().__init__(f"interrupted by {signal.Signals(signum).name}")
        self.signum = signum
        self.exit_code = 128 + signum


@dataclasses.dataclass
class StopRequest:
    """The signal handler: raises `Interrupted` at once, or, while `deferring`, records the signal for a loop to
    poll (`requested`)."""

    signum: int | None = None
    deferred: bool = False

    def __call__(self, signum, frame) -> None:
        self.signum = signum
        if not self.deferred:
            raise Interrupted(signum)

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def raise_if_requested(self) -> None:
        if self.signum is not None:
            raise Interrupted(self.signum)

    @contextlib.contextmanager
    def deferring(self) -> Iterator["StopRequest"]:
        self.raise_if_requested()
        self.deferred = True
        try:
            yield self
        finally:
            self.deferred = False


_active: StopRequest | None = None


def active() -> StopRequest | None:
    """The StopRequest installed by `handled`, if any."""
    return _active


@contextlib.contextmanager
def handled() -> Iterator[StopRequest]:
    """Installs a StopRequest for SIGINT and SIGTERM (outside the main thread, where Python cannot, one that no
    signal reaches) and restores the previous handlers on exit."""
    global _active
    stop = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    previous = {sig: signal.signal(sig, stop) for sig in SIGNALS}
    outer, _active = _active, stop
    try:
        yield stop
    finally:
        _active = outer
        for sig, handler in previous.items():
            signal.signal(sig, handler)
