"""Trials are timed against a short probe, scaled by one end-to-end baseline timing per session
(planner.search.latency.probed_ratio); a probe that slows down says another process competes."""
import os
import subprocess
import sys
import time

import pytest
import torch

from planner.search.latency import CONTENDED, interleaved_ratio, measure_anchor, probed_ratio

FIXED, STEP = 0.010, 0.004   # a toy pipeline: fixed parts + seconds a step


def _toy(steps):
    return lambda: time.sleep(FIXED + steps * STEP)


def test_probe_scaled_latency_matches_end_to_end_timing():
    """The toy's latency is fixed parts plus steps; the probe-scaled ratio of a 5-step candidate to the
    50-step baseline matches the end-to-end interleaved ratio within 10% (the issue's target for the
    finalists; on sleeps the difference measured here is under 1%)."""
    baseline, probe = _toy(50), _toy(2)
    anchor = measure_anchor(baseline, probe, repeats=3)
    assert anchor.ratio == pytest.approx((FIXED + 50 * STEP) / (FIXED + 2 * STEP), rel=0.1)
    for steps in (3, 5, 10):
        probed = probed_ratio(_toy(steps), probe, anchor, repeats=3)
        end_to_end = interleaved_ratio(baseline, _toy(steps), repeats=3)
        assert probed.result.ratio == pytest.approx(end_to_end.ratio, rel=0.1)
        assert not probed.contended and probed.result.baseline_s == anchor.baseline_s


def _torch_work():
    a = torch.randn(384, 384)
    for _ in range(15):
        a = torch.tanh(a @ a * 1e-3)


def test_the_contention_guard_fires_with_a_burner_process():
    """A burner on every core: torch's OpenMP threads spin-wait for the busy cores and the probe runs many
    times slower than it did for the anchor (21-36x measured on 2 cores): the timing is retried, then
    flagged, never taken as it is."""
    threads = torch.get_num_threads()
    torch.set_num_threads(max(2, threads))
    try:
        anchor = measure_anchor(_torch_work, _torch_work, repeats=3)
        burners = [subprocess.Popen([sys.executable, "-c", "import time\nend = time.time() + 60\n"
                                     "while time.time() < end: pass"]) for _ in range(os.cpu_count() or 2)]
        try:
            time.sleep(0.5)
            probed = probed_ratio(_torch_work, _torch_work, anchor, repeats=3, pause_s=0.1, retries=1)
        finally:
            for b in burners:
                b.kill()
                b.wait()
    finally:
        torch.set_num_threads(threads)
    assert probed.probe_slowdown >= CONTENDED and probed.contended
