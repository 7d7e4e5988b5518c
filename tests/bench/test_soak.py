"""bench.soak briefly (about 30 s of serving): the production soak's plumbing and its zero-tolerance checks."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import needs_weights

pytestmark = [pytest.mark.slow, needs_weights("digits-unet")]
ROOT = Path(__file__).resolve().parents[2]


def test_soak_half_a_minute(tmp_path):
    out = tmp_path / "soak.json"
    # the documented command, from the repository root; a short unaccelerated phase (its clients still drain)
    proc = subprocess.run([sys.executable, "-m", "bench.soak", "--minutes", "0.5", "--baseline-minutes", "0.05",
                           "--threads", "8", "--model", "digits-unet", "--pool", "24", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert "Traceback" not in proc.stderr, proc.stderr[-4000:]
    # exit 1 only for the memory check: half a minute is mostly warm-up, so drift is reported, not required
    result = json.loads(out.read_text())
    checks = result["checks"]
    assert proc.returncode == (0 if checks["all_hold"] else 1)
    assert checks["wrong_images"] == 0 and result["accelerated"]["images_checked"] > 100
    assert checks["leaked_after_failure"] == 0 and checks["state_clean_at_end"] and not result["final_leaks"]
    for kind in ("bad_label", "interrupted"):                      # each kind happened, raised in its own thread
        failed = result["accelerated"]["failed"][kind]
        assert failed["n"] > 0 and failed["isolated"] == failed["n"] and failed["leaked"] == 0
    assert checks["failed_requests_isolated"] and checks["errors_in_good_requests"] == 0
    assert checks["same_images_served_alone_after"] and checks["remove_restores_pipeline"]
    assert result["cache_added"] and "deepcache" in result["cache_added"]   # the shipped plan has no cache
    rss = result["rss_mb"]["after_warmup"]
    assert rss["n"] >= 3 and rss["drift"] >= 0 and "RSS after" in proc.stdout
    a, b = result["accelerated"]["latency_s"], result["unaccelerated"]["latency_s"]
    assert a["n"] > 50 and b["n"] >= 1 and a["p50"] <= a["p99"] and a["p50"] < b["p50"]


def test_leaked_state_sees_a_cache_that_kept_its_request():
    """The soak's leak check is not vacuous: with the end-of-call cleanup switched off, a request that
    fails mid-call leaves DeepCache's per-call features behind and the check names them."""
    import planner
    from backends.caching import DeepCacheConfig
    from backends.sampler import SamplerConfig
    from bench.soak import Ask, Interrupted, Interrupter, leaked_state, serve
    from ground.anatomy import denoiser_of
    from helpers import make_plan
    from planner.models import load_pipeline

    pipe = load_pipeline("digits-unet")
    handle = planner.apply(pipe, make_plan(pipe, "digits-unet", techniques=[SamplerConfig(name="ddim", steps=4),
                                                                             DeepCacheConfig(interval=2)], batch=2))
    interrupter = Interrupter(denoiser_of(pipe))
    try:
        runtime = next(h.info["runtime"] for h in handle.techniques.handles if "runtime" in h.info)
        interrupter.arm(2)
        with pytest.raises(Interrupted):
            serve(pipe, Ask((1, 2), (0, 1)))
        assert leaked_state(pipe, handle) == []                     # the real cleanup ran
        runtime.tracker._on_call_end.clear()                         # now break it
        interrupter.arm(2)
        with pytest.raises(Interrupted):
            serve(pipe, Ask((1, 2), (0, 1)))
        assert any("cache" in leak for leak in leaked_state(pipe, handle))
    finally:
        interrupter.close()
        handle.remove()
