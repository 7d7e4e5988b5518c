"""What a plan was tuned on: device and library versions, compared when a plan is applied."""
from __future__ import annotations

import torch

from ground import __version__
from ground.devices import device_name


def current_environment(device: str = "cpu") -> dict:
    import diffusers

    return {"device": str(device), "device_name": device_name(device), "torch": torch.__version__,
            "diffusers": diffusers.__version__, "planner": __version__}


def differences(tuned: dict, here: dict) -> list[str]:
    """Human-readable differences that matter: device kind/name and library major.minor versions."""
    out = []
    if tuned["device"].split(":")[0] != here["device"].split(":")[0] or tuned.get("device_name") != here.get("device_name"):
        out.append(f"device {tuned['device']} ({tuned.get('device_name')}) vs {here['device']} ({here.get('device_name')})")
    for lib in ("torch", "diffusers", "planner"):
        if tuned[lib].split("+")[0].split(".")[:2] != here[lib].split("+")[0].split(".")[:2]:
            out.append(f"{lib} {tuned[lib]} vs {here[lib]}")
    return out
