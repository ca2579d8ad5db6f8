"""CPU time of a process and its descendants, read from /proc: what a server's processes cost per image.

``process_tree_cpu_s(pid)`` is cumulative, so the CPU a tree spent over a span is the difference of
two readings. It counts user and system time of every thread of ``pid`` and of every process
descended from it, and also the time of descendants that have already exited and been waited for
(the kernel adds a reaped child's time to its parent's ``cutime``/``cstime``): a backend stub or
worker that exits between two readings does not take its CPU time with it.

The resolution is one clock tick per process (``CLOCK_TICKS_PER_S``, usually 100 per second), so
readings a few seconds apart are good to a fraction of a percent of a busy process. Reading the tree
scans /proc once (a few milliseconds on a node with a thousand processes): it belongs at window
edges, never on a request's path.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

__all__ = ["CLOCK_TICKS_PER_S", "ProcessCpu", "process_cpu", "process_tree_cpu_s"]

CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class ProcessCpu:
    """One process's line in /proc/<pid>/stat, the parts that count CPU time (in clock ticks)."""

    pid: int
    ppid: int
    own_ticks: int  # utime + stime: every thread of the process
    reaped_children_ticks: int  # cutime + cstime: children it has waited for, and theirs

    @property
    def ticks(self) -> int:
        return self.own_ticks + self.reaped_children_ticks


def process_cpu(pid: int) -> ProcessCpu | None:
    """``pid``'s CPU counters; None when there is no such process (or it is not ours to read)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            text = f.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: the fields after it start past the last ')'.
    fields = text[text.rindex(b")") + 2 :].split()
    # fields[0] is field 3 of proc(5) (state): ppid is field 4, utime..cstime are fields 14..17.
    return ProcessCpu(
        pid=pid,
        ppid=int(fields[1]),
        own_ticks=int(fields[11]) + int(fields[12]),
        reaped_children_ticks=int(fields[13]) + int(fields[14]),
    )


def process_tree_cpu_s(pid: int) -> float | None:
    """CPU seconds of ``pid`` and all its descendants, living or exited and waited for; None when ``pid`` is gone."""
    root = process_cpu(pid)
    if root is None:
        return None
    children: dict[int, list[ProcessCpu]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != pid:
            stat = process_cpu(int(entry))
            if stat is not None:
                children.setdefault(stat.ppid, []).append(stat)
    ticks, todo = 0, [root]
    while todo:
        stat = todo.pop()
        ticks += stat.ticks
        todo.extend(children.get(stat.pid, ()))
    return ticks / CLOCK_TICKS_PER_S
