"""The tuned peers' sweep (bench.peer_bench) without a model: bisection on the search verdict, the fastest value
that holds, verification stepping back toward quality, and the command line's plan and budget pairs."""
from pathlib import Path
from types import SimpleNamespace

import pytest

from bench.peer_bench import ModelBench
from bench.peer_methods import geometric_grid, tunables
from bench.peers import parse_configs, parse_plans


class FakeBench(ModelBench):
    """ModelBench's sweep with decisions given by two predicates on the knob value (no pipelines)."""

    def __init__(self, holds_search, holds_verify, work=None, sweep_evals=6, step_backs=3):
        self.args = SimpleNamespace(sweep_evals=sweep_evals, step_backs=step_backs, work=work is not None)
        self.holds = {"search": holds_search, "verify": holds_verify}
        self.work_of = work
        self.calls = {"search": [], "verify": []}
        self.log = lambda text: None

    def store(self, peer, steps=None):
        return SimpleNamespace(peer=peer, info={}, work=None)

    def decide(self, budget, phase, store):
        value = store.peer.params["value"]
        self.calls[phase].append(value)
        return SimpleNamespace(holds=self.holds[phase](value), results={})

    def work_proxy(self, store):
        return self.work_of(store.peer.params["value"])


def _peer(value):
    return SimpleNamespace(method=f"v{value}", params={"value": value})


def steps_tunable():
    return next(t for t in tunables(50) if t.name == "DPM-Solver++ 2M")


def test_steps_bisection_finds_the_edge_and_steps_back_until_verified():
    bench = FakeBench(lambda k: k >= 7, lambda k: k >= 9)
    result = bench.sweep("fid+2", steps_tunable(), {}, _peer, start=20)
    grid = steps_tunable().grid
    assert bench.calls["search"][0] == 20                  # the default recipe first, as a user starts
    assert len(result.order) <= 6 and grid[result.winner] == 7
    assert bench.calls["verify"] == [7, 8, 9]              # one notch (one step) back at a time
    assert result.verified and grid[result.final] == 9 and result.reason is None


def test_verification_gives_up_after_the_step_backs():
    bench = FakeBench(lambda k: k >= 7, lambda k: False, step_backs=3)
    result = bench.sweep("fid+2", steps_tunable(), {}, _peer, start=20)
    assert bench.calls["verify"] == [7, 8, 9, 10] and not result.verified
    assert steps_tunable().grid[result.final] == 10        # the row reports the last value tried


def test_nothing_holds_is_a_reason_not_a_row_of_numbers():
    bench = FakeBench(lambda k: False, lambda k: False)
    result = bench.sweep("psnr>=30", steps_tunable(), {}, _peer, start=20)
    assert result.winner is None and "holds psnr>=30" in result.reason and not bench.calls["verify"]
    assert bench.calls["search"] == [20, 50]              # the default failed, so the safest value next: it fails too


def test_threshold_past_saturation_takes_the_safer_value_of_equal_work():
    fbc = next(t for t in tunables(50) if t.name == "First Block Cache")
    grid = fbc.grid
    bench = FakeBench(lambda t: True, lambda t: True, work=lambda t: max(0.3, 1 - t), sweep_evals=8)
    result = bench.sweep("fid+2", fbc, {}, _peer, start=0.08)
    held = sorted(grid[i] for i in result.order)
    saturated = [t for t in held if 1 - t <= 0.3]
    assert saturated, held
    assert grid[result.winner] == min(saturated)           # as fast as the most aggressive, and safer


def test_grids_hold_the_package_defaults():
    grid = geometric_grid(0.08, 0.01, 1.0)
    assert 0.08 in grid and grid == tuple(sorted(grid)) and 0.01 <= grid[0] and grid[-1] <= 1.0
    by_name = {t.name: t for t in tunables(50)}
    for t in by_name.values():
        assert t.grid[t.index(t.start)] == t.start, t.name
    assert by_name["DeepCache"].grid == tuple(range(2, 11))
    assert by_name["DDIM"].grid[0] == 50 and by_name["DDIM"].grid[-1] == 2
    assert {"First Block Cache", "cache-dit DBCache F1B0"} == {t.name for t in by_name.values() if t.compile_docs}


def test_plan_and_config_arguments(tmp_path):
    configs = parse_configs(["digits-unet:fid+2", "digits-dit:psnr>=30"])
    assert configs == [("digits-unet", "fid+2"), ("digits-dit", "psnr>=30")]
    (tmp_path / "digits-unet.yaml").write_text("")
    plans = parse_plans(["digits-dit:psnr>=30=plans/x=1.yaml"], tmp_path, configs)
    assert plans == {("digits-unet", "fid+2"): tmp_path / "digits-unet.yaml",
                     ("digits-dit", "psnr>=30"): Path("plans/x=1.yaml")}
    with pytest.raises(ValueError, match="MODEL:BUDGET=PATH"):
        parse_plans(["digits-dit=plan.yaml"], tmp_path, configs)
