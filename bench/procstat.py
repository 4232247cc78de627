"""What /proc says about a process: CPU seconds (all threads) and memory high-water mark."""

from __future__ import annotations

import os
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_times(pid: int) -> tuple[float, float]:
    """(utime, stime) of ``pid`` (every thread of it), in seconds; zeros once it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0, 0.0
    # The command name (field 2) may contain spaces and parentheses: split after its end.
    fields = raw[raw.rindex(")") + 2:].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` (every thread of it), in seconds; 0.0 once it is gone."""
    user, system = cpu_times(pid)
    return user + system


def loadavg() -> float:
    """The 1-minute load average: how busy the machine was besides the benchmark."""
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return float("nan")


def status_kib(pid: int, name: str) -> int | None:
    """A ``kB`` line of /proc/PID/status (``VmHWM`` = peak RSS, ``VmRSS`` = current)."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith(name + ":"):
            return int(line.split()[1])
    return None


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children, grandchildren...), from /proc's children lists.

    ``sceau serve --workers N`` serves from N child processes: their CPU is the server's.
    """
    found: list[int] = []
    todo = [pid]
    while todo:
        parent = todo.pop()
        try:
            tasks = list(Path(f"/proc/{parent}/task").iterdir())
        except OSError:
            continue
        for task in tasks:
            try:
                children = [int(c) for c in (task / "children").read_text().split()]
            except (OSError, ValueError):
                continue
            found.extend(children)
            todo.extend(children)
    return found


def total_cpu_seconds(pids: list[int]) -> float:
    """Sum of :func:`cpu_seconds` over ``pids``."""
    return sum(cpu_seconds(pid) for pid in pids)


def cpu_line(cpu: int) -> tuple[float, float, float]:
    """(busy, idle, steal) seconds of one CPU since boot, from /proc/stat."""
    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError:
        return 0.0, 0.0, 0.0
    for line in lines:
        if line.startswith(f"cpu{cpu} "):
            v = [int(x) for x in line.split()[1:]]
            # user nice system idle iowait irq softirq steal guest guest_nice
            idle = v[3] + v[4]
            steal = v[7] if len(v) > 7 else 0
            busy = sum(v[:8]) - idle - steal
            return busy / CLK_TCK, idle / CLK_TCK, steal / CLK_TCK
    return 0.0, 0.0, 0.0
