"""Quality of the demo models as shipped (the README's table): label accuracy and FID at 50 DDIM steps.

    python -m planner.demo.check [digits-unet digits-dit FOLDER ...] [--n 500] [--threads 1] [--json out.json]

Samples use seeds 10,000 onwards (50 per digit for N=500), away from the search and verification seeds;
FID uses the digits feature network against the 360 held-out digits.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch


def check(model: str, n: int = 500, seed: int = 10_000, steps: int = 50) -> dict:
    """Label accuracy (class-conditional models) and FID against the held-out digits of any 1-channel
    16x16 digits model: the demo models and the folders of planner/demo/folders.py (DDPMPipeline too)."""
    from ground.generation import default_request, generate
    from planner.demo.data import digits_split
    from planner.demo.features import DigitsFeatures
    from planner.models import load_pipeline
    from planner.quality.accuracy import accuracy
    from ground.anatomy import anatomy_of
    from planner.quality.features import get_extractor
    from planner.quality.fid import fid

    extractor = get_extractor("digits")
    pipe = load_pipeline(model)
    request = default_request(pipe, n, seed)
    start = time.time()
    images = generate(pipe, request, steps=steps, batch_size=100)
    anatomy = anatomy_of(pipe)
    reference = anatomy.reference_images()
    if reference is None:   # not a demo pipeline: the same held-out digits
        reference = (digits_split("held_out")[0] + 1) / 2
    row = dict(model=model, steps=steps, n=n, first_seed=seed)
    if anatomy.conditioning == "class":
        acc = accuracy(images, request.conditions, anatomy.label_classifier())
        row.update(label_accuracy=acc.value, label_accuracy_ci=[acc.ci_low, acc.ci_high])
    else:
        # No label asked for: how evenly the classifier finds the ten digits, and how sure it is.
        probs = DigitsFeatures().logits(images).softmax(1)
        shares = torch.bincount(probs.argmax(1), minlength=10).float() / n
        row.update(min_class_share=round(shares.min().item(), 3),
                   mean_confidence=round(probs.max(1).values.mean().item(), 3))
    row.update(fid_heldout=round(fid(extractor(images), extractor(reference)), 3),
               seconds=round(time.time() - start, 1))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="*", default=["digits-unet", "digits-dit"])
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for model in args.models:
        rows.append(check(model, args.n))
        print(json.dumps(rows[-1]), flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
