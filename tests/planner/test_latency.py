"""Trials are timed against a short probe, scaled by one end-to-end baseline timing per session
(planner.search.latency.probed_ratio); a probe that slows down says another process competes."""
import os
import subprocess
import sys
import time

import pytest

from planner.search.latency import CONTENDED, interleaved_ratio, measure_anchor, probed_ratio

FIXED, STEP = 0.020, 0.008   # a toy pipeline: fixed parts + seconds a step (long enough that sleep jitter is small)


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


def _python_work():
    return sum(i * i for i in range(200_000))


def test_the_contention_guard_fires_with_burner_processes():
    """Burners on every core (six per core): the probe runs several times slower than it did for the
    anchor, so the timing is retried, then flagged, never taken as it is. (With torch's OpenMP threads the
    slowdown is far larger, 21-36x on 2 cores with one busy core; a pure-Python probe keeps this test
    independent of the thread runtime.)"""
    anchor = measure_anchor(_python_work, _python_work, repeats=3)
    burners = [subprocess.Popen([sys.executable, "-c", "import time\nend = time.time() + 60\n"
                                 "while time.time() < end: pass"]) for _ in range(6 * (os.cpu_count() or 2))]
    try:
        time.sleep(1.5)
        probed = probed_ratio(_python_work, _python_work, anchor, repeats=3, pause_s=0.1, retries=1)
    finally:
        for b in burners:
            b.kill()
            b.wait()
    assert probed.probe_slowdown >= CONTENDED and probed.contended
