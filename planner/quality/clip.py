"""CLIP score (100 * cosine of image and prompt embeddings), where a CLIP model is in the local cache.

Nothing is downloaded: the model must already be in the Hugging Face cache (or at $PLANNER_CLIP_MODEL),
and the conditions must be text prompts. Otherwise the metric is reported unavailable.
"""
from __future__ import annotations

import os

import numpy as np
import torch

from planner.quality.paired import MetricUnavailable

CLIP_ENV = "PLANNER_CLIP_MODEL"
DEFAULT_CLIP = "openai/clip-vit-base-patch32"


def load_clip():
    name = os.environ.get(CLIP_ENV, DEFAULT_CLIP)
    try:
        from transformers import CLIPModel, CLIPProcessor

        model = CLIPModel.from_pretrained(name, local_files_only=True, use_safetensors=True).eval()
        processor = CLIPProcessor.from_pretrained(name, local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - not cached, not installed, wrong format: all "unavailable"
        raise MetricUnavailable(f"clip unavailable: CLIP model {name!r} is not in the local cache "
                                f"({type(exc).__name__}); set ${CLIP_ENV} to a local CLIP folder") from None
    return model, processor


@torch.no_grad()
def per_image_clip(images: torch.Tensor, conditions, model_processor=None) -> np.ndarray:
    if not all(isinstance(c, str) for c in conditions):
        raise MetricUnavailable("clip unavailable: this model's conditions are not text prompts "
                                "(CLIP score compares an image with its prompt); use acc or fid")
    model, processor = model_processor or load_clip()
    out = []
    for i in range(0, len(images), 32):
        x = images[i:i + 32].float().clamp(0, 1)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        pics = [(im.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8) for im in x]
        inputs = processor(text=list(conditions[i:i + 32]), images=pics, return_tensors="pt", padding=True)
        img = model.get_image_features(pixel_values=inputs["pixel_values"])
        txt = model.get_text_features(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        cos = torch.nn.functional.cosine_similarity(img, txt, dim=-1)
        out.append(100 * cos.clamp(min=0))
    return torch.cat(out).double().numpy()
