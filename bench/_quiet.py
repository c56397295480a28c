"""Is the machine quiet? Load averages, busy cores, and CPU used by processes not ours.

Timings on a 2-core machine are only worth something when nothing else runs: one other
busy process halves a runner's cores. The suite therefore waits for a quiet machine
before each runner and, while a runner runs, samples ``/proc`` once a second to add up the
CPU time of every process that is not the suite or one of its descendants ("foreign"
CPU). A runner during which foreign processes used more than a little CPU is re-run.
Linux only (``/proc``); elsewhere the checks report ``None`` and never wait.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

__all__ = ["ForeignCpu", "busy_cores", "loadavg", "wait_quiet"]

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _cpu_times() -> list[int] | None:
    try:
        with open("/proc/stat") as f:
            return [int(x) for x in f.readline().split()[1:]]
    except OSError:
        return None


def busy_cores(seconds: float = 3.0) -> dict[str, float] | None:
    """Cores busy (user+system+irq) and stolen by the hypervisor, averaged over ``seconds``."""
    a = _cpu_times()
    time.sleep(seconds)
    b = _cpu_times()
    if a is None or b is None:
        return None
    d = [y - x for x, y in zip(a, b, strict=False)]
    total = sum(d[:8]) or 1
    cores = os.cpu_count() or 1
    idle = d[3] + d[4]  # idle + iowait
    steal = d[7] if len(d) > 7 else 0
    return {
        "busy": round(cores * (total - idle - steal) / total, 3),
        "steal": round(cores * steal / total, 3),
    }


def wait_quiet(
    max_load: float = 0.5,
    max_busy: float = 0.15,
    max_wait: float = 1200.0,
    use_loadavg: bool = True,
    sample: float = 3.0,
    log: Any = print,
) -> dict[str, Any]:
    """Wait until the machine is quiet, at most ``max_wait`` seconds.

    Quiet: the 1-minute load average is at most ``max_load`` (when ``use_loadavg``: before
    the first runner; after one of our runners the load average still holds our own load
    for minutes, so between runners only the busy-core sample counts) and a
    sample (``sample`` seconds) shows at most ``max_busy`` cores busy.

    Returns:
        ``{"waited_s", "quiet", "loadavg", "busy"}`` at the moment we stopped waiting.
    """
    t0 = time.monotonic()
    while True:
        busy = busy_cores(sample)
        load = loadavg()
        ok = (busy is None or busy["busy"] <= max_busy) and (
            not use_loadavg or load[0] <= max_load
        )
        waited = time.monotonic() - t0
        if ok or waited >= max_wait:
            return {"waited_s": round(waited, 1), "quiet": ok, "loadavg": load, "busy": busy}
        log(
            f"    machine busy (load {load[0]:.2f}, {busy and busy['busy']:.2f} cores busy); "
            f"waiting ({waited:.0f} s so far, at most {max_wait:.0f} s)",
            flush=True,
        )
        time.sleep(20 if not use_loadavg else 60)


def _proc_table() -> dict[int, tuple[int, int]]:
    """pid -> (ppid, CPU ticks used so far) of every process we can read."""
    out: dict[int, tuple[int, int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                raw = f.read()
        except OSError:
            continue
        # "pid (comm) state ppid ..." - comm may contain spaces and parentheses.
        fields = raw[raw.rfind(")") + 2 :].split()
        out[int(name)] = (int(fields[1]), int(fields[11]) + int(fields[12]))
    return out


def _comm(pid: int) -> str:
    """The process's command line, shortened (its name when the line is unreadable)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            line = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        if line:
            return line[:80]
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return "?"


class ForeignCpu:
    """CPU seconds used by processes outside our process tree while a runner runs.

    Processes that start and end between two samples (1 s apart) are missed, so the figure
    is a lower bound; a long test suite or a compiler run shows up in full.
    """

    def __init__(self, interval: float = 1.0):
        self.interval = interval
        self.ticks = 0
        self.top: dict[int, int] = {}
        self.comm: dict[int, str] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._ok = os.path.isdir("/proc")

    def _ours(self, table: dict[int, tuple[int, int]]) -> set[int]:
        root = os.getpid()
        ours = {root}
        children: dict[int, list[int]] = {}
        for pid, (ppid, _) in table.items():
            children.setdefault(ppid, []).append(pid)
        todo = [root]
        while todo:
            for c in children.get(todo.pop(), []):
                if c not in ours:
                    ours.add(c)
                    todo.append(c)
        return ours

    def _loop(self) -> None:
        prev = _proc_table()
        while not self._stop.wait(self.interval):
            cur = _proc_table()
            ours = self._ours(cur)
            for pid, (_, ticks) in cur.items():
                if pid in ours or pid not in prev:
                    continue
                d = ticks - prev[pid][1]
                if d > 0:
                    self.ticks += d
                    self.top[pid] = self.top.get(pid, 0) + d
                    if pid not in self.comm:
                        self.comm[pid] = _comm(pid)
            prev = cur

    def __enter__(self) -> ForeignCpu:
        if self._ok:
            self._thread = threading.Thread(target=self._loop, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    @property
    def seconds(self) -> float | None:
        return self.ticks / _TICK if self._ok else None

    def top_processes(self, n: int = 3) -> list[str]:
        """The ``n`` foreign processes that used the most CPU: ``"pid comm: seconds"``."""
        out = []
        for pid, ticks in sorted(self.top.items(), key=lambda kv: -kv[1])[:n]:
            out.append(f"{pid} {self.comm.get(pid, '?')}: {ticks / _TICK:.1f} s")
        return out
