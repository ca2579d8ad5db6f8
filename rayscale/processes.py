"""Stopping a set of processes that may change while they stop: TERM, wait, then KILL what is left."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

__all__ = ["stop_processes"]


def stop_processes(list_pids: Callable[[], list[int]], *, term_grace_s: float, kill_grace_s: float = 10.0) -> None:
    """SIGTERM every pid ``list_pids`` names, wait up to ``term_grace_s`` for them to exit, then
    SIGKILL whatever ``list_pids`` names then and wait up to ``kill_grace_s``.

    ``list_pids`` is asked again before each signal, so a process that started in between is stopped too.
    """
    for sig, grace_s in ((signal.SIGTERM, term_grace_s), (signal.SIGKILL, kill_grace_s)):
        pids = list_pids()
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in pids):
            time.sleep(0.2)
