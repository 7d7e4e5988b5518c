"""bench.peers and bench.oracle end to end, each in its --quick mode (a few samples: the plumbing, not the figures)."""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import needs_weights

pytestmark = [pytest.mark.slow, needs_weights("digits-unet"), needs_weights("digits-dit")]
ROOT = Path(__file__).resolve().parents[2]


def _run(module: str, *args: str) -> None:
    # a subprocess from the repository root: exactly the documented one-line command
    proc = subprocess.run([sys.executable, "-m", module, "--quick", "--threads", "1", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-4000:]


def test_peers_quick(tmp_path):
    out = tmp_path / "peers.json"
    models = ["digits-unet", "digits-dit", "tiny-sd", "tiny-pixart"]   # tiny-flux: the same paths as tiny-pixart
    _run("bench.peers", "--models", *models, "--out", str(out))
    result = json.loads(out.read_text())
    rows = {(r["model"], r["method"]): r for r in result["rows"]}
    counts = {m: len([r for r in result["rows"] if r["model"] == m]) for m in models}
    assert len(set(counts.values())) == 1 and counts["digits-unet"] > 10   # every method on every model
    for model in models:
        # run, or listed with the reason
        for r in (r for r in result["rows"] if r["model"] == model):
            assert r["reason"] or ({"latency_ratio", "speedup", "metrics", "meets_budget"} <= set(r))
    assert all(c["baseline_unchanged"] for c in result["checks"])
    ran = {k: r for k, r in rows.items() if not r["reason"]}
    for method in ("DPM-Solver++ 2M, 20 steps", "DDIM, 25 steps"):
        r = ran[("digits-unet", method)]
        fid = r["metrics"]["fid+2"]
        assert fid["n"] == 8 and fid["ci_low"] <= fid["value"] <= fid["ci_high"] and r["speedup"] > 1
        assert "psnr" in r["metrics"] and "acc" in r["metrics"]
    assert "BasicTransformerBlock" in rows[("digits-unet", "tomesd ratio 0.5")]["reason"]
    assert "transformer" in rows[("digits-unet", "First Block Cache 0.08")]["reason"]
    assert "UNet" in rows[("digits-dit", "DeepCache interval 3")]["reason"]
    assert ("digits-dit", "First Block Cache 0.08") in ran and ("tiny-pixart", "First Block Cache 0.12") in ran
    if importlib.util.find_spec("DeepCache"):
        assert ("digits-unet", "DeepCache interval 3") in ran and ("tiny-sd", "DeepCache interval 5") in ran
    if importlib.util.find_spec("tomesd"):
        assert ("tiny-sd", "tomesd ratio 0.5") in ran
    assert "psnr>=30" in ran[("tiny-sd", "DDIM, 25 steps")]["metrics"]
    table = out.with_suffix(".md").read_text()
    assert "| method |" in table and "random weights" in table
    # the README's compact block comes from the same rows
    from types import SimpleNamespace

    from bench.peers import readme_block, summary
    args = SimpleNamespace(budget="fid+2", tiny_budget="psnr>=30", threads=1, work_threads=1, repeats=1, batch=2,
                           samples=8)
    block = readme_block(result["rows"], summary(result["rows"]), args, result["wall_s"])
    assert "| `digits-unet` |" in block and "| `digits-dit` |" in block and "- `tiny-sd`:" in block


def test_oracle_quick(tmp_path):
    out = tmp_path / "oracle.json"
    _run("bench.oracle", "--out", str(out), "--workers", "2")   # the grid split over two worker processes
    result = json.loads(out.read_text())
    for key in ("oracle_speedup", "planner_speedup", "oracle_evaluations", "planner_evaluations", "budget"):
        assert key in result
    assert result["oracle_evaluations"] == 4 and result["planner_evaluations"] == 2
    assert result["budget"] == "fid+2" and len(result["oracle"]["points"]) == 4
    assert result["oracle"]["workers"] == 2
    # the merged study keeps the grid's order: unipc {4, 8} steps x DeepCache {off, interval 2}
    assert [(p["params"]["steps"], p["params"]["cache"]) for p in result["oracle"]["points"]] == [
        (4, "none"), (4, "deepcache"), (8, "none"), (8, "deepcache")]
    # every grid point was a real planner trial: cascade-pruned, or measured with a latency
    assert all(p["state"] in ("PRUNED", "COMPLETE") for p in result["oracle"]["points"])
    assert all(p["speedup"] for p in result["oracle"]["points"] if p["state"] == "COMPLETE")
