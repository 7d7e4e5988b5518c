"""Train the demo models and the digits feature network, seeded and reproducible, on CPU.

    python -m planner.demo.train unet      # ~14.5 min on 2 cores
    python -m planner.demo.train dit       # ~12 min on 2 cores
    python -m planner.demo.train features  # ~1 min

Weights are written as safetensors under planner/demo/weights/ (the shipped copies).
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from planner.demo.architectures import DigitsFeatureNet, dit_config, scheduler_config, unet_config
from planner.demo.data import NULL_CLASS, digits_split

WEIGHTS_DIR = Path(__file__).parent / "weights"

# steps, batch, peak learning rate: chosen so each run fits in 15 minutes on 2 CPU cores.
RECIPES = {
    "unet": dict(steps=900, batch=128, lr=1e-3, label_dropout=0.1, ema=0.995),
    "dit": dict(steps=750, batch=96, lr=1e-3, label_dropout=0.0, ema=0.995),  # DiT drops labels itself
}


def _augment(images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    # One-pixel random shifts: cheap, keeps digits recognisable, stretches 1.4k images further.
    shift = torch.randint(-1, 2, (2,), generator=gen).tolist()
    return torch.roll(images, shifts=shift, dims=(2, 3))


def _lr_at(step: int, steps: int, peak: float) -> float:
    warmup = max(1, steps // 20)
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def _target(scheduler, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    # What the denoiser learns to output; the samplers read the same prediction_type from the config.
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(x0, noise, t)
    if kind == "sample":
        return x0
    raise ValueError(f"unsupported prediction_type {kind!r}")


def fit(model: torch.nn.Module, scheduler, recipe: dict, *, seed: int = 0, tag: str = "",
        conditional: bool = True) -> tuple[torch.nn.Module, dict]:
    """The denoiser training loop shared by the demo models and planner/demo/folders.py.

    `recipe` gives steps, batch, lr, label_dropout and ema; the scheduler gives the noise schedule and
    the prediction type. Returns the EMA model in eval mode and the training info. Seed the global RNG
    before building `model` for reproducible initial weights.
    """
    gen = torch.Generator().manual_seed(seed)
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(recipe["ema"]))
    images, labels = digits_split("train")
    opt = torch.optim.AdamW(model.parameters(), lr=recipe["lr"], weight_decay=0.0)
    alphas = scheduler.alphas_cumprod
    model.train()
    start, losses = time.time(), []
    for step in range(recipe["steps"]):
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, recipe["steps"], recipe["lr"])
        idx = torch.randint(0, len(images), (recipe["batch"],), generator=gen)
        x0 = _augment(images[idx], gen)
        cond = {}
        if conditional:
            y = labels[idx].clone()
            drop = torch.rand(len(y), generator=gen) < recipe["label_dropout"]
            y[drop] = NULL_CLASS
            cond["class_labels"] = y
        t = torch.randint(0, scheduler.config.num_train_timesteps, (len(idx),), generator=gen)
        noise = torch.randn(x0.shape, generator=gen)
        a = alphas[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        loss = F.mse_loss(model(xt, t, **cond).sample, _target(scheduler, x0, noise, t))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ema.update_parameters(model)
        losses.append(loss.item())
        if step % 100 == 0 or step == recipe["steps"] - 1:
            recent = sum(losses[-100:]) / len(losses[-100:])
            print(f"[{tag}] step {step:5d}  loss(avg100) {recent:.4f}  {time.time() - start:6.0f}s", flush=True)
    final = ema.module.eval()
    info = dict(**recipe, final_loss_avg100=sum(losses[-100:]) / len(losses[-100:]),
                train_seconds=round(time.time() - start, 1),
                parameters=sum(p.numel() for p in final.parameters()))
    return final, info


def train_denoiser(kind: str, out_dir: Path, seed: int = 0, steps: int | None = None) -> dict:
    from diffusers import DDIMScheduler, DDPMScheduler, DiTTransformer2DModel, UNet2DModel

    from planner.demo.pipeline import DigitsDiTPipeline, DigitsUNetPipeline

    recipe = dict(RECIPES[kind])
    if steps is not None:
        recipe["steps"] = steps
    torch.manual_seed(seed)
    if kind == "unet":
        model = UNet2DModel(**unet_config())
    else:
        model = DiTTransformer2DModel(**dit_config())
    scheduler = DDPMScheduler(**scheduler_config())
    final, trained = fit(model, scheduler, recipe, seed=seed, tag=kind)
    pipe_cls = DigitsUNetPipeline if kind == "unet" else DigitsDiTPipeline
    # Trained with the DDPM noise schedule; shipped with DDIM on it, the standard 50-step baseline.
    pipe = pipe_cls(final, DDIMScheduler.from_config(scheduler.config))
    pipe.save_pretrained(out_dir, safe_serialization=True)
    info = dict(kind=kind, seed=seed, **trained)
    (out_dir / "training.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def train_feature_net(out_dir: Path, seed: int = 0, epochs: int = 30) -> dict:
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    images, labels = digits_split("train")
    held_images, held_labels = digits_split("held_out")
    net = DigitsFeatureNet()
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    start = time.time()
    for epoch in range(epochs):
        net.train()
        order = torch.randperm(len(images), generator=gen)
        for i in range(0, len(order), 64):
            idx = order[i:i + 64]
            x = _augment(images[idx], gen)
            # Light noise so the classifier also reads slightly imperfect generated digits.
            x = x + 0.1 * torch.randn(x.shape, generator=gen)
            loss = F.cross_entropy(net(x), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        accuracy = (net(held_images).argmax(1) == held_labels).float().mean().item()
        feats = net.features(held_images).double()
    rank = int(torch.linalg.matrix_rank(torch.cov(feats.T)).item())
    dead = int((feats.std(0) < 1e-6).sum().item())
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(out_dir / "model.safetensors"))
    info = dict(seed=seed, epochs=epochs, held_out_accuracy=round(accuracy, 4), feature_dim=net.FEATURE_DIM,
                reference_covariance_rank=rank, dead_dimensions=dead, train_seconds=round(time.time() - start, 1))
    (out_dir / "training.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["unet", "dit", "features"])
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: the shipped weights)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=None, help="override the recipe's step count")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.what == "features":
        info = train_feature_net(args.out or WEIGHTS_DIR / "digits-features", seed=args.seed)
    else:
        info = train_denoiser(args.what, args.out or WEIGHTS_DIR / f"digits-{args.what}", args.seed, args.steps)
    print(json.dumps(info, indent=2))


if __name__ == "__main__":
    main()
