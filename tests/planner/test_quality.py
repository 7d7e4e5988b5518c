"""Quality metrics, bootstrap CIs, the budget language, the evaluator and `planner evaluate`."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from ground.errors import PlannerError
from planner.quality.budget import Budget, Clause, parse_budget
from planner.quality.fid import GaussianStats, fid, kid, weighted_stats

@pytest.fixture(scope="module")
def digits():
    from planner.demo.data import digits_split
    from planner.quality.features import get_extractor

    images, labels = digits_split("train")
    return (images + 1) / 2, labels, get_extractor("digits")


@pytest.fixture(scope="module")
def reference(digits):
    from planner.models import load_pipeline
    from planner.quality.reference import resolve_reference

    return resolve_reference(digits[2], pipe=load_pipeline("digits-unet"))


# ---- FID / KID ------------------------------------------------------------------------------------

def test_fid_matches_scipy_sqrtm_formula():
    from scipy import linalg

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(300, 12)), rng.normal(size=(250, 12)) * 1.3 + 0.2
    ref = GaussianStats.from_features(b)
    mu, s = weighted_stats(a)
    expected = ((mu - ref.mu) ** 2).sum() + np.trace(s) + np.trace(ref.sigma) - 2 * np.trace(
        linalg.sqrtm(s @ ref.sigma).real)
    assert fid(a, ref) == pytest.approx(expected, rel=1e-8, abs=1e-8)


def test_fid_of_a_set_against_itself_is_zero(reference):
    assert fid(reference.features, reference.stats) == pytest.approx(0.0, abs=1e-6)


def test_kid_unbiased_and_sensitive():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(400, 8)), rng.normal(size=(400, 8))
    assert abs(kid(x, y)) < 0.012        # measured 0.0059 (these seeds)
    assert kid(x + 0.7, y) > 1.3         # measured 2.67
    w = np.ones(400)
    assert kid(x, y, w) == pytest.approx(kid(x, y))


def test_weighted_stats_equal_explicit_duplication():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(20, 3))
    w = np.bincount(rng.integers(0, 20, 20), minlength=20)
    mu_w, s_w = weighted_stats(x, w)
    mu_d, s_d = weighted_stats(np.repeat(x, w, axis=0))
    np.testing.assert_allclose(mu_w, mu_d)
    np.testing.assert_allclose(s_w, s_d)


def test_real_digits_against_held_out_is_small(digits, reference):
    feats = digits[2](digits[0][:720])
    # features are unit-variance scaled: real vs real measured 0.92 (720 training digits vs the 360 held out)
    assert fid(feats, reference.stats) < 1.4


# ---- bootstrap --------------------------------------------------------------------------------------

def test_bootstrap_is_seeded_and_covers_the_value():
    from planner.quality.bootstrap import mean_metric

    values = np.random.default_rng(3).normal(size=500)
    a, b = mean_metric("m", values, seed=7), mean_metric("m", values, seed=7)
    assert a == b
    assert a.ci_low < a.value < a.ci_high and a.n == 500
    assert a.ci_width == pytest.approx(2 * 1.96 / math.sqrt(500), rel=0.06)   # measured 0.1695 vs 0.1753


# ---- paired metrics ----------------------------------------------------------------------------------

def test_psnr_ssim_of_a_set_against_itself(digits):
    from planner.quality.paired import psnr, ssim

    images = digits[0][:32]
    assert math.isinf(psnr(images, images).value)
    assert ssim(images, images).value == pytest.approx(1.0)


def test_psnr_known_value_and_ssim_drops(digits):
    from planner.quality.paired import psnr, ssim

    images = digits[0][:32] * 0.8
    shifted = images + 0.1
    assert psnr(shifted, images).value == pytest.approx(20.0)
    noisy = (images + 0.2 * torch.randn(images.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    assert ssim(noisy, images).value < 0.8   # measured 0.722


def test_lpips_and_clip_report_unavailable(digits, monkeypatch):
    from planner.quality.evaluate import evaluate_budget

    monkeypatch.delenv("PLANNER_LPIPS_WEIGHTS", raising=False)
    images, labels, _ = digits
    result = evaluate_budget("lpips<=0.1,clip-0.5,ssim>=0.9", images[:16], images[:16],
                             conditions=labels[:16].tolist(), n_boot=20)
    assert not result.available and not result.holds
    messages = result.unavailable_messages()
    assert any("lpips unavailable" in m for m in messages) and any("clip unavailable" in m for m in messages)
    assert result.results[2].available and result.results[2].point


def test_label_accuracy_of_real_digits(digits):
    from planner.quality.accuracy import accuracy

    images, labels, extractor = digits
    result = accuracy(images[:300], labels[:300].tolist(), extractor.logits)
    assert result.value >= 99 and result.ci_low <= result.value <= result.ci_high   # measured 100.0


# ---- budget language ---------------------------------------------------------------------------------

ALL_FORMS = "fid+2,fid*1.1,kid+0.001,acc-1,clip-0.5,psnr>=30,ssim>=0.9,lpips<=0.1,fid<=20,acc>=95"


def test_budget_accepts_every_form_and_round_trips():
    budget = parse_budget(ALL_FORMS)
    assert [str(c) for c in budget] == ALL_FORMS.split(",")
    assert parse_budget(str(budget)) == budget and str(budget) == ALL_FORMS
    assert parse_budget(" fid+2 , ssim>=.9 ") == Budget((Clause("fid", "+", 2.0), Clause("ssim", ">=", 0.9)))
    assert parse_budget("kid+1e-3").clauses[0].threshold == 0.001
    acc = parse_budget("acc-1").clauses[0]
    assert acc.holds(-0.5) and not acc.holds(-1.5) and acc.unfavourable(-2, 0.5) == -2
    fid_clause = parse_budget("fid*1.1").clauses[0]
    assert fid_clause.holds(1.05) and not fid_clause.holds(1.2) and fid_clause.unfavourable(0.9, 1.3) == 1.3


@pytest.mark.parametrize("text, position", [
    ("fid+x", 4), ("fid", 3), ("", 0), ("fid+2,", 6), (",fid+2", 0), ("fid+2;acc-1", 5),
    ("psnr+3", 4), ("foo+1", 0), ("fid+2,ssim=0.9", 10), ("fid-1", 3), ("lpips>=0.1", 5),
    ("fid*0", 4), ("fid+2 ssim>=1", 6), ("fid+-2", 4),
])
def test_budget_rejects_malformed_with_position(text, position):
    with pytest.raises(PlannerError) as info:
        parse_budget(text)
    message = str(info.value)
    assert "\n" not in message and f"at position {position}" in message and repr(text) in message


# ---- features ------------------------------------------------------------------------------------

def test_digits_features_grey_and_rgb_any_size(digits):
    ex = digits[2]
    grey = digits[0][:4]
    assert ex(grey).shape == (4, 64) and ex(grey).dtype == torch.float64
    rgb_big = torch.nn.functional.interpolate(grey, size=(32, 32), mode="bilinear").expand(-1, 3, -1, -1)
    # same digits, resized and colour-replicated: measured max |diff| 0.289 (mean |feature| 0.85)
    assert torch.allclose(ex(rgb_big), ex(grey), atol=0.44)
    assert ex([grey[0], rgb_big[1]]).shape == (2, 64)


def test_inception_without_weights_says_how_to_provide_them(monkeypatch, tmp_path):
    from planner.quality.features import get_extractor

    monkeypatch.setenv("PLANNER_INCEPTION_WEIGHTS", str(tmp_path / "missing.safetensors"))
    with pytest.raises(PlannerError) as info:
        get_extractor("inception")
    assert "PLANNER_INCEPTION_WEIGHTS" in str(info.value) and "\n" not in str(info.value)
    monkeypatch.delenv("PLANNER_INCEPTION_WEIGHTS")
    from planner.models import load_pipeline

    with pytest.raises(PlannerError):
        get_extractor(None, pipe=load_pipeline("tiny-sd"))  # inception is the default there


def test_inception_architecture_and_safetensors_path(monkeypatch, tmp_path):
    from safetensors.torch import save_file

    from planner.quality.inception import InceptionFeatures

    random_net = InceptionFeatures(random_weights=True)
    assert sum(p.numel() for p in random_net.net.parameters()) == 21_785_568  # FID Inception-v3, no fc
    path = tmp_path / "pt_inception-2015-12-05.safetensors"
    save_file({k: v.contiguous() for k, v in random_net.net.state_dict().items()}, str(path))
    monkeypatch.setenv("PLANNER_INCEPTION_WEIGHTS", str(path))
    loaded = InceptionFeatures()
    images = torch.rand(1, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    feats = loaded(images)
    assert feats.shape == (1, 2048)
    assert torch.allclose(feats, random_net(images))


def test_torchscript_features(tmp_path):
    from planner.quality.features import get_extractor

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.input_size = 8

        def forward(self, x):
            return torch.nn.functional.avg_pool2d(x, 4).flatten(1)

    path = tmp_path / "net.pt"
    torch.jit.script(Net()).save(str(path))
    ex = get_extractor(str(path))
    assert ex(torch.rand(3, 1, 16, 16)).shape == (3, 12)  # grey -> RGB, 16 -> 8, pooled to 2x2x3
    with pytest.raises(PlannerError):
        get_extractor(str(tmp_path / "nope.pt"))


# ---- evaluator, reference sets, cache -------------------------------------------------------------

def test_evaluator_verdicts_on_real_digits(digits, reference):
    from planner.quality.evaluate import Evaluator

    images, labels, ex = digits
    base = images[:300]
    ev = Evaluator("fid+2,kid+0.01,acc-1,psnr>=30,ssim>=0.9", base, reference, ex, labels[:300].tolist(), n_boot=100,
                   classifier=ex.logits)
    same = ev.evaluate(base)
    assert same.holds and same.point_holds
    assert all(r.measured.ci_low == r.measured.ci_high for r in same.results if r.clause.relative)
    gen = torch.Generator().manual_seed(0)
    broken = (base + 0.6 * torch.randn(base.shape, generator=gen)).clamp(0, 1)
    bad = ev.evaluate(broken)
    assert not bad.holds and not bad.point_holds
    fid_row = bad.results[0]
    # clearly fails, CI included: measured ΔFID 17.8 [16.4, 19.2]
    assert fid_row.measured.value > 9 and fid_row.measured.ci_low > 8
    assert "fid+2" in bad.table() and bad.to_dict()["clauses"][0]["clause"] == "fid+2"


def test_reference_folder_and_cache(tmp_path, digits):
    from PIL import Image

    from planner.quality.reference import resolve_reference
    from planner.quality.store import DiskCache

    folder = tmp_path / "ref"
    folder.mkdir()
    for i, image in enumerate(digits[0][:6]):
        Image.fromarray((image[0].numpy() * 255).round().astype(np.uint8)).save(folder / f"{i}.png")
    (folder / "notes.txt").write_text("ignored")
    ref = resolve_reference(digits[2], reference_dir=folder)
    assert ref.n == 6 and "6 images" in ref.source
    with pytest.raises(PlannerError):
        resolve_reference(digits[2], reference_dir=tmp_path / "missing")

    cache = DiskCache(tmp_path / "cache")
    key = {"kind": "images", "model": "sha256:x", "seeds": [1, 2]}
    assert cache.load(key) is None
    cache.save(key, {"images": torch.ones(2, 1, 4, 4)})
    assert torch.equal(cache.load(key)["images"], torch.ones(2, 1, 4, 4))
    assert cache.load(dict(key, seeds=[1, 3])) is None
    assert not list((tmp_path / "cache").glob("*.tmp"))


# ---- the CLI ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def random_unet(tmp_path_factory):
    """A small random-weight digits UNet saved as a diffusers folder: a 'non-demo' model for the CLI."""
    from diffusers import DDPMScheduler, UNet2DModel

    from planner.demo.architectures import scheduler_config, unet_config
    from planner.demo.pipeline import DigitsUNetPipeline

    torch.manual_seed(0)
    cfg = dict(unet_config(), block_out_channels=(16, 32, 32), norm_num_groups=8, attention_head_dim=16)
    path = tmp_path_factory.mktemp("models") / "random-unet"
    DigitsUNetPipeline(UNet2DModel(**cfg), DDPMScheduler(**scheduler_config())).save_pretrained(
        path, safe_serialization=True)
    return path


def _evaluate(*argv) -> int:
    from planner.cli import main

    return main(["evaluate", *map(str, argv)])


def test_cli_exit_codes(random_unet, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PLANNER_CACHE", str(tmp_path / "cache"))
    common = (random_unet, "--samples", 16, "--steps", 3, "--boot", 50)
    assert _evaluate(*common, "--candidate-steps", 3, "--budget", "fid+2,psnr>=30,ssim>=0.99") == 0
    out = capsys.readouterr().out
    assert "fid+2" in out and "inf" in out and "holds" in out
    assert list((tmp_path / "cache" / "images").glob("*.safetensors"))
    assert _evaluate(*common, "--candidate-steps", 1, "--budget", "psnr>=60", "--json", tmp_path / "e.json") == 1
    assert '"holds": false' in (tmp_path / "e.json").read_text()
    assert _evaluate(*common, "--candidate-steps", 3, "--budget", "fid+x") == 2
    assert "expected a number at position 4" in capsys.readouterr().err
    assert _evaluate(*common, "--budget", "fid+2") == 2  # no candidate
    plan = tmp_path / "plan.json"
    plan.write_text("{}")
    assert _evaluate(*common, "--plan", plan, "--budget", "fid+2") == 2  # not a valid plan (or no runtime)
    assert _evaluate(*common, "--plan", tmp_path / "none.yaml", "--budget", "fid+2") == 2
    assert _evaluate(*common, "--candidate-steps", 3, "--budget", "lpips<=0.1") == 2
    assert _evaluate("no-such-model", "--candidate-steps", 3, "--budget", "fid+2") == 2


# ---- the trained demo model (shipped: a missing file fails) ------------------------------------

def _generate(steps: int, n: int, seed: int):
    from ground.generation import default_request
    from planner.models import load_pipeline
    from planner.quality.cli import set_sampler
    from planner.quality.store import DiskCache, cached_generate

    pipe = load_pipeline("digits-unet")
    set_sampler(pipe, "ddim")
    request = default_request(pipe, n, seed)
    return cached_generate(pipe, request, steps=steps, sampler="ddim", cache=DiskCache()), request


@pytest.mark.slow
def test_fid_kid_sensitivity_on_digits_unet(reference):
    from planner.quality.evaluate import Evaluator

    n = 500
    base, request = _generate(50, n, 0)
    few, _ = _generate(2, n, 0)  # 5-step DDIM is as good as 50 on this model (measured); 2 is not
    ev = Evaluator("fid+2,kid+0.001", base, reference, reference_extractor(), list(request.conditions))
    result = ev.evaluate(few)
    fid_row, kid_row = result.results
    # measured at N=500: +4.5 [3.7, 5.6]; KID +0.34 [0.26, 0.44]
    assert fid_row.measured.value > 2 * fid_row.measured.ci_width and fid_row.measured.ci_low > 2
    assert fid_row.measured.ci_low > 0 and kid_row.measured.ci_low > 0


def reference_extractor():
    from planner.quality.features import get_extractor

    return get_extractor("digits")


@pytest.mark.slow
def test_disjoint_seed_sets_agree_on_digits_unet(reference):
    from planner.quality.bootstrap import bootstrap
    from planner.quality.fid import fid as fid_of

    ex = reference_extractor()
    results = []
    images, _ = _generate(50, 500, 0)
    for part in (slice(0, 250), slice(250, 500)):  # seeds 0-249 and 250-499: disjoint sets, one config
        feats = ex(images[part]).numpy()
        results.append(bootstrap("fid", lambda w, f=feats: fid_of(f, reference.stats, w), len(feats)))
    a, b = results
    assert a.ci_low <= b.ci_high and b.ci_low <= a.ci_high  # the CIs overlap


def test_label_accuracy_of_digits_unet():
    from planner.quality.accuracy import accuracy

    from ground.anatomy import anatomy_of
    from planner.models import load_pipeline

    images, request = _generate(5, 64, 0)
    # measured 100.0 (64 samples, 5 DDIM steps, 2026-11-28)
    assert accuracy(images, request.conditions, anatomy_of(load_pipeline("digits-unet")).label_classifier()).value > 95
