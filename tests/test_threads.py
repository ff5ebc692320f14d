"""The CPU thread policy (difflab.threads): load measured from /proc/stat, one thread per free core,
and a governor that gives a thread up when another process takes a core and takes it back after."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from difflab import threads


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/stat is Linux's")
def test_a_busy_process_is_measured_as_one_busy_core():
    spin = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        threads.others_busy(0.3)  # let it start
        busy = threads.others_busy(1.0)
    finally:
        spin.kill()
    assert busy is not None and 0.7 <= busy <= threads.cpu_count() + 0.1
    assert 1 <= threads.free_cores(0.2) <= threads.cpu_count()


def test_the_governor_drops_a_thread_for_a_busy_core_and_takes_it_back(monkeypatch):
    said: list[str] = []
    before = torch.get_num_threads()
    try:
        gov = threads.ThreadGovernor(2, active=True, say=said.append)
        gov.cores, gov.WINDOW_S = 2, 0.0
        loads = iter([0.1, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0])
        monkeypatch.setattr(gov._probe, "read", lambda: next(loads))
        for step in range(7):
            gov.observe(step)
        assert gov.changes == [(1, 2, 1), (5, 1, 2)]  # down at once, up after three calm windows
        assert "other processes keep 1.0 of 2 cores busy" in said[0] and "free again" in said[1]
        fixed = threads.ThreadGovernor.for_training(1, say=said.append)
        assert not fixed.active and torch.get_num_threads() == 1 and len(said) == 2  # nothing said
    finally:
        torch.set_num_threads(before)
