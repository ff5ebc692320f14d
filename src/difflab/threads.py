"""CPU threads that survive a busy core.

PyTorch's intra-op threads wait for each other at the end of every parallel region, so one thread
whose core is taken by another process stalls them all: on 2 cores the digits U-Net trains at 7.0
steps/s with 2 threads alone, 2.0 with 2 threads beside one busy process, and 5.2 with 1 thread
beside it (``bench/RESULTS.md``). The rule is therefore *one thread per core that other processes
leave free*:

* :func:`free_cores` measures the load of other processes from ``/proc/stat`` (all CPU time spent,
  minus this process's own) and returns the cores left free;
* non-training commands (sample, eval, ...) take that many threads once, at start;
* :class:`ThreadGovernor` does the same for training and keeps measuring over windows of about two
  seconds while it trains: when others take a core it drops a thread, when they leave it takes the
  thread back (after three calm windows), and says so on one line each time.

``train.threads > 0`` fixes the count and switches all of this off. The thread count never changes
what is computed beyond float rounding (the steps, data and seeds are the same), so results never
depend on the machine's load; bit-identical resumes across a change of thread count are not
promised (fix ``train.threads`` for those).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable

import torch

__all__ = ["ThreadGovernor", "apply_threads", "bf16_slowdown", "cpu_count", "free_cores", "others_busy"]


def cpu_count() -> int:
    """Cores this process may run on (its affinity mask; ``os.cpu_count()`` where that is unknown)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _cpu_times() -> tuple[float, float] | None:
    """``(busy, total)`` seconds of all cores since boot, from ``/proc/stat`` (None elsewhere)."""
    try:
        with open("/proc/stat") as fh:
            fields = fh.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    ticks = [float(v) for v in fields[1:]]
    hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0.0)  # idle + iowait
    total = sum(ticks[:8])  # user nice system idle iowait irq softirq steal (guest is inside user)
    return (total - idle) / hz, total / hz


def _own_cpu() -> float:
    t = os.times()
    return t.user + t.system


class _LoadProbe:
    """Cores kept busy by *other* processes between two calls of :meth:`read`."""

    def __init__(self):
        self.last = self._now()

    @staticmethod
    def _now():
        times = _cpu_times()
        return None if times is None else (times[0], _own_cpu(), time.monotonic())

    def read(self) -> float | None:
        now, last = self._now(), self.last
        self.last = now
        if now is None or last is None or now[2] - last[2] <= 0:
            return None
        busy, own, wall = now[0] - last[0], now[1] - last[1], now[2] - last[2]
        return max(0.0, (busy - own) / wall)


def others_busy(interval: float = 0.25) -> float | None:
    """Cores kept busy by other processes, measured over ``interval`` seconds (None if unknown)."""
    probe = _LoadProbe()
    time.sleep(interval)
    return probe.read()


def _free(cores: int, others: float | None) -> int:
    return cores if others is None else max(1, min(cores, int(cores - others + 0.5)))


def free_cores(interval: float = 0.25) -> int:
    """Cores not taken by other processes (at least 1): ``round(cores - others_busy)``."""
    return _free(cpu_count(), others_busy(interval))


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def apply_threads(requested: int = 0, say: Callable[[str], None] | None = None) -> int:
    """Set torch's intra-op threads: ``requested`` if > 0, else the cores free now. Returns the count."""
    if requested > 0:
        n = requested
    else:
        n = free_cores()
        if say is not None:
            say(f"threads: {n} ({n} of {cpu_count()} cores free; set train.threads to fix the count)")
    torch.set_num_threads(n)
    return n


class ThreadGovernor:
    """Keeps a training process at one thread per free core while it trains (``observe`` after each
    step). Inactive (a no-op) when the count is fixed or training runs on a GPU."""

    WINDOW_S = 2.0  # seconds of training between load measurements
    CALM_WINDOWS = 3  # windows with a core free again before a thread is taken back

    def __init__(self, threads: int, active: bool, say: Callable[[str], None] = _say):
        self.threads, self.active, self.say = threads, active, say
        self.cores = cpu_count()
        self.calm = 0
        self.changes: list[tuple[int, int, int]] = []  # (step, old, new)
        self._probe = _LoadProbe() if active else None
        self._last = time.monotonic()

    @classmethod
    def for_training(
        cls, requested: int, model: torch.nn.Module | None = None, device: str = "cpu",
        say: Callable[[str], None] = _say,
    ) -> ThreadGovernor:
        """Set the starting count (``requested`` if > 0, else the free cores) and announce it once."""
        if requested > 0:
            torch.set_num_threads(requested)
            return cls(requested, active=False, say=say)
        n = free_cores()
        torch.set_num_threads(n)
        gpu = str(device).startswith("cuda")
        size = f"; model {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters" if model else ""
        say(
            f"threads: {n} ({n} of {cpu_count()} cores free{size}; "
            + ("adjusted while training if other processes take or free cores" if not gpu else "GPU run")
            + "; set train.threads to fix the count)"
        )
        return cls(n, active=not gpu, say=say)

    def observe(self, step: int) -> None:
        if not self.active or time.monotonic() - self._last < self.WINDOW_S:
            return
        self._last = time.monotonic()
        others = self._probe.read()
        if others is None:
            self.active = False
            return
        free = _free(self.cores, others)
        if free < self.threads:
            self._set(step, free, f"other processes keep {others:.1f} of {self.cores} cores busy")
            self.calm = 0
        elif free > self.threads:
            self.calm += 1
            if self.calm >= self.CALM_WINDOWS:
                self._set(step, self.threads + 1, "a core is free again")
                self.calm = 0
        else:
            self.calm = 0

    def _set(self, step: int, n: int, why: str) -> None:
        self.changes.append((step, self.threads, n))
        self.say(f"threads: {self.threads} -> {n} at step {step} ({why})")
        self.threads = n
        torch.set_num_threads(n)


def bf16_slowdown(size: int = 192, repeats: int = 10) -> float:
    """How many times slower a bf16 matrix product is than a float32 one on this CPU (CPUs without
    native bf16 instructions emulate it: about 50x slower on an AVX2-only EPYC)."""
    a = torch.randn(size, size)
    times = []
    for x in (a, a.to(torch.bfloat16)):
        x @ x  # warm-up
        t = time.perf_counter()
        for _ in range(repeats):
            x @ x
        times.append(time.perf_counter() - t)
    return times[1] / max(times[0], 1e-9)
