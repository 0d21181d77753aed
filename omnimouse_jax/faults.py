"""Fault injection for the crash-safety tests: `OMNIMOUSE_KILL_AT=POINT:STEP` makes the process SIGKILL itself when it
reaches POINT at STEP, exactly as a preempted or OOM-killed job would die. Unset (always, outside tests) it does nothing."""
from __future__ import annotations

import os
import signal

ENV = "OMNIMOUSE_KILL_AT"


def kill_point(point: str, step: int) -> None:
    if os.environ.get(ENV) == f"{point}:{step}":
        os.kill(os.getpid(), signal.SIGKILL)
