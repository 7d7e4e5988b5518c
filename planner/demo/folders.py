"""Two standard diffusers pipeline folders trained on the demo's digits but *outside* the demo set, to
check that the search's quality decisions hold on models it was not tuned on (issue 23).

    python -m planner.demo.folders ddpm-v --out DIR   # ~6-7 min on 2 free cores (estimated, see RECIPES)
    python -m planner.demo.folders dit-b --out DIR    # ~6-7 min on 2 free cores (estimated)

* `ddpm-v`: a plain diffusers DDPMPipeline (unconditional) with a UNet2DModel laid out differently from
  digits-unet (attention at 4x4, not 8x8), trained for v-prediction on the cosine (squaredcos_cap_v2)
  schedule; it loads with `DDPMPipeline.from_pretrained(DIR)` and no project code.
* `dit-b`: a class-conditional DiT on 4x4 patches (16 tokens, 6 wider blocks; digits-dit: 2x2 patches,
  64 tokens, 8 blocks), trained for sample (x0) prediction on the cosine schedule, saved as the
  project's DigitsDiTPipeline (a stock DiTPipeline needs a VAE).

Both are 1-channel 16x16 images in [0, 1], so `--features digits` applies; both ship a DDIMScheduler on
their training schedule (the 50-step baseline), as the demo models do.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from planner.demo.architectures import dit_config, unet_config
from planner.demo.train import fit

KINDS = ("ddpm-v", "dit-b")
FOLDER_NAMES = {"ddpm-v": "digits-ddpm-v", "dit-b": "digits-dit-b"}

# steps x batch sized for <= 8 minutes on 2 free cores: ~0.55 s/step for either, measured single-threaded
# (2 threads gain little on models this small). Both runs at once on 2 busy shared cores took 25 min each.
RECIPES = {
    "ddpm-v": dict(steps=700, batch=96, lr=1e-3, label_dropout=0.0, ema=0.995),
    "dit-b": dict(steps=700, batch=128, lr=1e-3, label_dropout=0.0, ema=0.995),  # DiT drops labels itself
}
SEEDS = {"ddpm-v": 23, "dit-b": 42}  # added to build_folder's seed: not the demo models' seed 0


def scheduler_config(kind: str) -> dict:
    # Cosine schedule for both (the demo's is linear); the prediction type is what differs.
    return dict(
        num_train_timesteps=1000,
        beta_schedule="squaredcos_cap_v2",
        prediction_type="v_prediction" if kind == "ddpm-v" else "sample",
        clip_sample=False,  # as the demo: no sampler the search swaps in clips, so the baseline does not
    )


def unet_v_config() -> dict:
    # The demo UNet's layout, unconditional, narrower at the bottom (~1.8 M parameters), attention only at
    # 4x4, where it is cheap.
    config = dict(unet_config(), block_out_channels=(32, 64, 96),
                  down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
                  up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"))
    del config["num_class_embeds"]
    return config


def dit_b_config() -> dict:
    # The demo DiT's layout with 6 blocks of width 192 on 4x4 patches: 16 tokens; ~4.6 M parameters.
    return dict(dit_config(), num_attention_heads=6, num_layers=6, patch_size=4)


def build_folder(kind: str, out_dir, *, steps: int | None = None, seed: int = 0, batch: int | None = None) -> dict:
    """Train `kind` (ddpm-v or dit-b) and save it as a diffusers folder at out_dir; returns the info
    written to out_dir/training.json (train_seconds, final_loss_avg100, parameters, ...).
    `steps` and `batch` override the recipe (the tests build tiny folders in seconds)."""
    from diffusers import DDIMScheduler, DDPMPipeline, DDPMScheduler, DiTTransformer2DModel, UNet2DModel

    from planner.demo.pipeline import DigitsDiTPipeline

    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    out_dir = Path(out_dir)
    recipe = dict(RECIPES[kind])
    if steps is not None:
        recipe["steps"] = steps
    if batch is not None:
        recipe["batch"] = batch
    seed = SEEDS[kind] + seed
    torch.manual_seed(seed)
    scheduler = DDPMScheduler(**scheduler_config(kind))
    if kind == "ddpm-v":
        model, trained = fit(UNet2DModel(**unet_v_config()), scheduler, recipe, seed=seed, tag=kind,
                             conditional=False)
        pipe = DDPMPipeline(unet=model, scheduler=DDIMScheduler.from_config(scheduler.config))
    else:
        model, trained = fit(DiTTransformer2DModel(**dit_b_config()), scheduler, recipe, seed=seed, tag=kind)
        pipe = DigitsDiTPipeline(model, DDIMScheduler.from_config(scheduler.config))
    pipe.save_pretrained(out_dir, safe_serialization=True)
    info = dict(kind=kind, folder=FOLDER_NAMES[kind], seed=seed, beta_schedule=scheduler.config.beta_schedule,
                prediction_type=scheduler.config.prediction_type, **trained)
    (out_dir / "training.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kind", choices=KINDS)
    parser.add_argument("--out", type=Path, required=True, help="output folder (created)")
    parser.add_argument("--seed", type=int, default=0, help="offset added to the recipe's own seed")
    parser.add_argument("--steps", type=int, default=None, help="override the recipe's step count")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(json.dumps(build_folder(args.kind, args.out, steps=args.steps, seed=args.seed), indent=2))


if __name__ == "__main__":
    main()
