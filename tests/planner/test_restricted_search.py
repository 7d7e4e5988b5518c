"""`SearchSettings.space`: a search restricted to listed values stays inside them, in a study of its own."""
from planner.search.context import SearchSettings
from planner.search.optimize import optimize


def test_optimize_searches_only_the_given_space(digits_unet, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    space = {"sampler": ["ddim"], "steps": [5, 6]}
    settings = SearchSettings(name="digits-unet", budget="psnr>=12", trials=2, samples=16,
                              verify_samples=16, batch=2, baseline_steps=10, techniques=("sampler",), space=space,
                              latency_repeats=1, threads=1, out=str(tmp_path / "p.yaml"))
    result = optimize(settings, log=lambda *_: None)
    sampler = result.plan.technique_configs()[0]
    assert sampler.name == "ddim" and sampler.steps in (5, 6)     # no anchor outside the space was enqueued
    unrestricted = optimize(SearchSettings(**{**settings.__dict__, "space": None, "trials": 1}), log=lambda *_: None)
    assert unrestricted.study_name != result.study_name
