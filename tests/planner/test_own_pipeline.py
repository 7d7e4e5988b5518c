"""Your model, your prompts, your dtype: the real-pipeline path, on the tiny SD, SDXL, PixArt, SD3 and
FLUX pipelines saved to folders and loaded back as a user's, and on a pipeline built in memory."""
import pytest
import torch

import planner
from planner.cli import main
from planner.plan import load_plan

PROMPTS = ["a red cat", "a blue car", "a small boat", "an old man", "a field of flowers", "a city at night"]
FAST = ["--trials", "2", "--samples", "8", "--verify-samples", "8", "--batch", "2", "--baseline-steps", "10",
        "--techniques", "sampler", "--threads", "2"]


def _folder(tmp_path_factory, family):
    from planner.models import load_pipeline

    folder = tmp_path_factory.mktemp(family) / "pipe"
    load_pipeline(f"tiny-{family}").save_pretrained(folder, safe_serialization=True)
    return folder


@pytest.mark.parametrize("family", ["sd", "sdxl", "pixart", "sd3", "flux"])
def test_optimize_run_gate_on_a_users_folder(family, tmp_path_factory, tmp_path, monkeypatch, capsys):
    folder = _folder(tmp_path_factory, family)
    monkeypatch.chdir(tmp_path)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# my production prompts\n" + "\n".join(PROMPTS) + "\n")
    out = tmp_path / "plan.yaml"
    assert main(["optimize", str(folder), "--budget", "psnr>=30", "--prompts", str(prompts), "--dtype", "bf16",
                 "--out", str(out), *FAST]) == 0, capsys.readouterr()
    plan = load_plan(out)
    assert plan.shapes.dtype == "bf16" and plan.conditions.source == "prompts.txt"
    assert [r.prompt for r in plan.conditions.verify] == ["a field of flowers"] and len(plan.conditions.search) == 5
    assert plan.model.components and plan.model.structure
    assert main(["run", str(out), "--model", str(folder), "--out", str(tmp_path / "grid.png"), "--n", "2"]) == 0
    assert main(["gate", str(out), "--model", str(folder), "--samples", "8", "--repeats", "3",
                 "--speed-tolerance", "0.9"]) == 0, capsys.readouterr().out


def test_the_python_api_on_a_pipeline_with_a_lora(tmp_path):
    from peft import LoraConfig

    from planner.demo.tiny_pipelines import build_tiny_pipeline

    pipe = build_tiny_pipeline("sd")
    pipe.unet.add_adapter(LoraConfig(r=2, lora_alpha=2, target_modules=["to_q", "to_v"], init_lora_weights=False),
                          adapter_name="style")
    before = {n: p.detach().clone() for n, p in pipe.unet.named_parameters()}
    plan = planner.optimize(pipe, "psnr>=30", prompts=PROMPTS, name="my-sd-with-style", out=tmp_path / "p.yaml",
                            trials=2, samples=8, verify_samples=8, batch=2, baseline_steps=10,
                            techniques=("sampler",))
    assert load_plan(tmp_path / "p.yaml") == plan and plan.model.lora == {"style": 1.0}
    assert all(torch.equal(p, before[n]) for n, p in pipe.unet.named_parameters())   # left as found
    handle = planner.apply(pipe, plan)
    try:
        images = pipe(prompt=PROMPTS[:2], num_inference_steps=10, output_type="np").images
    finally:
        handle.remove()
    assert images.shape[0] == 2
    result = planner.gate(pipe, plan, samples=8, repeats=3, speed_tolerance=0.9)
    assert result.passed, "\n".join(result.lines)


def test_a_swapped_vae_invalidates_the_cached_baseline(tmp_path):
    from planner.demo.tiny_pipelines import build_tiny_pipeline
    from planner.quality.budget import parse_budget
    from planner.search.context import SearchContext, SearchSettings

    pipe = build_tiny_pipeline("sd")
    settings = SearchSettings(name="x", budget="psnr>=30", samples=16, baseline_steps=4, batch=2)

    def baseline():
        ctx = SearchContext(settings=settings, budget=parse_budget("psnr>=30"), pipe=pipe, fingerprint="sha256:" + "0" * 16)
        images = ctx.baseline_images("search", 4)
        return images, ctx.baseline.generated

    first, made = baseline()
    again, made_again = baseline()
    assert made == 4 and made_again == 0 and torch.equal(first, again)   # cached on disk
    swapped = build_tiny_pipeline("sd", seed=1).vae                       # another VAE
    pipe.vae = swapped
    third, made_third = baseline()
    assert made_third == 4 and not torch.equal(third, first)


def test_a_few_step_baseline_gets_the_cannot_help_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "p.yaml"
    code = main(["optimize", "tiny-sd", "--budget", "psnr>=30", "--out", str(out), "--trials", "2", "--samples", "16",
                 "--verify-samples", "16", "--batch", "2", "--baseline-steps", "4", "--techniques", "sampler,cache,quant",
                 "--study-name", "few"])
    text = capsys.readouterr().out
    assert "step cuts and caching cannot help: the baseline runs only 4 steps" in text
    from optuna.storages.journal import JournalFileBackend
    import optuna

    journal = tmp_path / "planner-cache" / "studies" / "few.journal"
    study = optuna.load_study(study_name="few", storage=optuna.storages.JournalStorage(JournalFileBackend(str(journal))))
    assert study.trials and all("cache" not in t.params and "sampler" not in t.params for t in study.trials)
    assert code == 0
    sampler = load_plan(out).technique_configs()[0]
    assert sampler.name == "keep" and sampler.steps == 4                 # the baseline's own schedule, pinned
    assert "the baseline runs only 4 steps" in (tmp_path / "p.report.md").read_text()


def test_a_timestep_distilled_model_with_only_step_cuts_to_search_is_refused_up_front(tmp_path):
    """FLUX.1-schnell's shape (no guidance embedding) runs ~4 steps: step cuts and caching cannot help, and
    with nothing else in --techniques there is nothing to search. That is said before any trial runs."""
    from ground.errors import PlannerError
    from planner.demo.tiny_pipelines import build_tiny_pipeline

    pipe = build_tiny_pipeline("flux", guidance_embeds=False)
    out = tmp_path / "p.yaml"
    with pytest.raises(PlannerError, match=r"nothing to search: .*distilled.*add quant, tokens or compile"):
        planner.optimize(pipe, "psnr>=30", prompts=PROMPTS, out=out, trials=2, samples=8, verify_samples=8,
                         batch=2, baseline_steps=10, techniques=("sampler",))
    assert not out.exists() and not (tmp_path / "p.report.md").exists()
