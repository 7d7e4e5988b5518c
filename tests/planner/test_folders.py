"""The benchmark folders outside the demo set (planner/demo/folders.py), built tiny: they load as standard
folders through planner's loader, generate through planner's path, and really differ from the demo."""
import json

import pytest
import torch

from ground.anatomy import anatomy_of
from ground.generation import default_request, generate
from planner.demo.architectures import scheduler_config as demo_scheduler_config
from planner.demo.folders import build_folder
from planner.models import load_pipeline

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def folders(tmp_path_factory, one_thread):
    root = tmp_path_factory.mktemp("folders")
    # Two optimiser steps on a batch of 8: the weights are noise, the folders are complete.
    infos = {kind: build_folder(kind, root / kind, steps=2, batch=8) for kind in ("ddpm-v", "dit-b")}
    return root, infos


def test_info_and_training_json(folders):
    root, infos = folders
    for kind, info in infos.items():
        assert info["steps"] == 2 and info["train_seconds"] >= 0
        assert torch.isfinite(torch.tensor(info["final_loss_avg100"]))
        assert json.loads((root / kind / "training.json").read_text()) == info
        assert not list((root / kind).rglob("*.bin"))   # safetensors only


def test_ddpm_v_is_a_stock_pipeline_outside_the_demo_schedule(folders):
    from diffusers import DDPMPipeline

    root, _ = folders
    stock = DDPMPipeline.from_pretrained(root / "ddpm-v", use_safetensors=True)   # no project code
    config = stock.scheduler.config
    assert type(stock.scheduler).__name__ == "DDIMScheduler"
    assert config.prediction_type == "v_prediction" and config.beta_schedule == "squaredcos_cap_v2"
    demo = demo_scheduler_config()
    assert (config.prediction_type, config.beta_schedule) != (demo["prediction_type"], demo["beta_schedule"])
    assert stock.unet.config.num_class_embeds is None


def test_dit_b_differs_from_the_demo_dit(folders):
    root, _ = folders
    pipe = load_pipeline(str(root / "dit-b"))
    assert type(pipe).__name__ == "DigitsDiTPipeline"
    assert pipe.transformer.config.patch_size == 4
    assert pipe.scheduler.config.prediction_type == "sample"
    assert pipe.scheduler.config.beta_schedule == "squaredcos_cap_v2"


@pytest.mark.parametrize("kind, conditioning", [("ddpm-v", "unconditional"), ("dit-b", "class")])
def test_loads_and_generates_through_planner(folders, kind, conditioning):
    root, _ = folders
    pipe = load_pipeline(str(root / kind))
    assert anatomy_of(pipe).conditioning == conditioning
    request = default_request(pipe, 3, seed=5)
    images = generate(pipe, request, steps=4)
    assert images.shape == (3, 1, 16, 16)
    assert torch.isfinite(images).all() and 0 <= images.min() and images.max() <= 1
    again = generate(pipe, request.rows(1, 2), steps=4)   # per-sample seeds: a row alone is the same image
    assert torch.allclose(again[0], images[1], atol=1e-5)
