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
    """A reduced tuned-peer sweep end to end: default, tuned, hand-stack and plan rows for both demo models
    and both budgets, plus the default recipes on one tiny pipeline."""
    out = tmp_path / "peers.json"
    _run("bench.peers", "--configs", "digits-unet:fid+2", "digits-dit:fid+2", "digits-dit:psnr>=30",
         "--tiny", "--models", "digits-unet", "digits-dit", "tiny-sd", "--out", str(out))
    result = json.loads(out.read_text())
    rows = result["rows"]
    configs = [("digits-unet", "fid+2"), ("digits-dit", "fid+2"), ("digits-dit", "psnr>=30")]
    assert all(c["baseline_unchanged"] for c in result["checks"])
    for r in rows:
        assert {"model", "budget", "method", "kind", "speedup", "speedup_ci", "meets_budget"} <= set(r)
        assert r["kind"] in ("baseline", "default", "tuned", "stack", "plan")
        # measured (conservative verdict and an interleaved speed-up), or listed with the reason
        assert r["reason"] or (r["speedup"] > 0 and len(r["speedup_ci"]) == 2 and isinstance(r["meets_budget"], bool))
    for config in configs:
        mine = [r for r in rows if (r["model"], r["budget"]) == config]
        kinds = {r["kind"] for r in mine}
        assert kinds == {"baseline", "default", "tuned", "stack", "plan"}, (config, kinds)
        tuned = [r for r in mine if r["kind"] == "tuned" and not r["reason"]]
        assert tuned, config
        for r in tuned:   # swept on the search seeds, verified on the verification seeds
            assert r["tuning"]["sweep"] and r["tuning"]["verification"]
            assert r["seeds"]["verify"][0] == r["seeds"]["search"][0] + 500_000
    # the same methods on every (model, budget): what cannot act on a model says why
    methods = {c: {r["method"] for r in rows if (r["model"], r["budget"]) == c and r["kind"] == "default"}
               for c in configs}
    assert methods[configs[0]] == methods[configs[1]] == methods[configs[2]]
    by = {(r["model"], r["budget"], r["method"]): r for r in rows}
    # a tuned step count is at least as fast, in counted work, as the default recipe of the same sampler
    compared = 0
    for sampler, default in (("DPM-Solver++ 2M", "DPM-Solver++ 2M, 20 steps"), ("DDIM", "DDIM, 25 steps")):
        for model, budget in configs:
            tuned = [r for r in rows if (r["model"], r["budget"]) == (model, budget) and r["kind"] == "tuned"
                     and r.get("tunable") == sampler and not r["reason"]]
            base = by[(model, budget, default)]
            if tuned and not base["reason"]:
                assert tuned[0]["work_ratio"] <= base["work_ratio"] + 1e-9, (model, budget, sampler)
                compared += 1
    assert compared >= 2
    assert "BasicTransformerBlock" in by[("digits-unet", "fid+2", "tomesd ratio 0.5")]["reason"]
    assert "transformer" in by[("digits-unet", "fid+2", "First Block Cache 0.08")]["reason"]
    assert "UNet" in by[("digits-dit", "fid+2", "DeepCache interval 3")]["reason"]
    assert not by[("digits-dit", "psnr>=30", "First Block Cache 0.08")]["reason"]
    dit_tuned = {r["tunable"] for r in rows if r["model"] == "digits-dit" and r["kind"] == "tuned" and "tuning" in r}
    assert {"First Block Cache", "TeaCache", "cache-dit DBCache F1B0"} <= dit_tuned   # thresholds swept on the DiT
    if importlib.util.find_spec("DeepCache"):
        assert not by[("digits-unet", "fid+2", "DeepCache interval 3")]["reason"]
        assert not by[("tiny-sd", "psnr>=30", "DeepCache interval 5")]["reason"]
        assert any(r.get("tunable") == "DeepCache" and "tuning" in r for r in rows if r["model"] == "digits-unet")
    if importlib.util.find_spec("tomesd"):
        assert not by[("tiny-sd", "psnr>=30", "tomesd ratio 0.5")]["reason"]
    # plans: the shipped ones at fid+2; none given at psnr>=30, said so
    assert not by[("digits-unet", "fid+2", next(r["method"] for r in rows if r["model"] == "digits-unet"
                                                and r["kind"] == "plan"))]["reason"]
    psnr_plan = next(r for r in rows if (r["model"], r["budget"]) == configs[2] and r["kind"] == "plan")
    assert "no plan given" in psnr_plan["reason"]
    # side by side: the plan, the best tuned peer and the hand stack timed together
    side = next(c for c in result["checks"] if c["model"] == "digits-unet")["side_by_side"]["fid+2"]
    assert side["repeats"] == 1 and "plan_over_best_tuned" in side
    table = out.with_suffix(".md").read_text()
    assert "| kind | method |" in table and "random weights" in table
    # the README's compact block comes from the same rows
    from types import SimpleNamespace

    from bench.peers import readme_block, summary
    args = SimpleNamespace(threads=1, work_threads=1, repeats=1, batch=2, side_repeats=1, seed=0, baseline_steps=10,
                           tiny_budget="psnr>=30")
    block = readme_block(rows, summary(rows, result["checks"]), args, result["wall_s"])
    assert "| `digits-unet`, `fid+2` |" in block and "| `digits-dit`, `psnr>=30` |" in block and "- `tiny-sd`:" in block


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
