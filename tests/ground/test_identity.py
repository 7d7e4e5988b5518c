"""Identity: computed once per module while weights are unchanged, changed by anything that changes
outputs (weights edited in place, a component swapped, a LoRA loaded, fused or re-scaled)."""
import torch

from ground import identity
from ground.identity import fingerprint, identity_key, pipeline_identity, structure


def test_fingerprint_is_computed_once_while_weights_are_unchanged(tiny_sd, monkeypatch):
    identity.forget(tiny_sd.unet)
    calls = []
    real = identity._full_hash
    monkeypatch.setattr(identity, "_full_hash", lambda m: calls.append(1) or real(m))
    first = fingerprint(tiny_sd.unet)
    assert fingerprint(tiny_sd.unet) == first and len(calls) == 1
    weight = tiny_sd.unet.conv_in.weight
    saved = weight.data.clone()
    try:
        weight.data += 0.01    # in place, through .data: no version counter moves, the probe still sees it
        changed = fingerprint(tiny_sd.unet)
    finally:
        weight.data.copy_(saved)
    assert changed != first and len(calls) == 2
    assert fingerprint(tiny_sd.unet) == first


def test_pipeline_identity_covers_every_component(tiny_sd):
    before = identity_key(tiny_sd)
    parts = pipeline_identity(tiny_sd)
    assert {"unet", "vae", "text_encoder"} <= set(parts["components"])
    saved = tiny_sd.vae.decoder.conv_out.bias.data.clone()
    try:
        tiny_sd.vae.decoder.conv_out.bias.data += 1.0   # "another VAE"
        assert identity_key(tiny_sd) != before
    finally:
        tiny_sd.vae.decoder.conv_out.bias.data.copy_(saved)
    assert identity_key(tiny_sd) == before


def test_structure_ignores_weights():
    a, b = torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)
    assert structure(a) == structure(b) and fingerprint(a) != fingerprint(b)
