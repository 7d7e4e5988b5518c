"""Small helpers shared by `bench.peers` and `bench.oracle`: JSON output, the environment, the README block."""
from __future__ import annotations

import json
import math
import os
import platform
import re
import time
from pathlib import Path

from ground.devices import torch_threads  # noqa: F401 - the benches time at a fixed thread count

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


def json_safe(value):
    """Strict JSON: inf -> "inf" (a PSNR of identical images), nan -> None; tuples -> lists."""
    if isinstance(value, float):
        if math.isnan(value):
            return None
        return value if math.isfinite(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def environment(threads: int) -> dict:
    import diffusers
    import torch

    return {"torch": torch.__version__, "diffusers": diffusers.__version__, "threads": threads,
            "cpu_count": os.cpu_count(), "python": platform.python_version(), "machine": platform.machine(),
            "device": "cuda" if torch.cuda.is_available() else "cpu"}


def write_json(path: Path, data: dict) -> None:
    from ground.files import write_text_atomic

    write_text_atomic(path, json.dumps(json_safe(data), indent=1, allow_nan=False) + "\n")


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def update_readme(name: str, text: str, readme: Path = ROOT / "README.md") -> bool:
    """Replace the block between `<!-- NAME:begin -->` and `<!-- NAME:end -->` in the README."""
    source = readme.read_text()
    pattern = re.compile(rf"(<!-- {re.escape(name)}:begin -->\n).*?(<!-- {re.escape(name)}:end -->)", re.S)
    if not pattern.search(source):
        return False
    from ground.files import write_text_atomic

    write_text_atomic(readme, pattern.sub(lambda m: m.group(1) + text.rstrip() + "\n" + m.group(2), source))
    return True


def fmt(x, digits: int = 2) -> str:
    if x is None:
        return "–"
    if isinstance(x, str):
        return x
    if math.isinf(x):
        return "∞" if x > 0 else "−∞"
    return f"{x:.{digits}f}".replace("-", "−")


def short_label(techniques: list[dict]) -> str:
    """A readable one-line label for technique dicts ({type, version, params})."""
    parts = []
    for t in techniques:
        p = t["params"]
        if t["type"] == "sampler":
            parts.append(f"{p['name']} {p['steps']} steps")
        elif t["type"] == "quantize":
            parts.append(p["mode"] + (f" (except {', '.join(p['exclude'])})" if p.get("exclude") else ""))
        elif t["type"] == "deepcache":
            placed = ", full steps placed from the profile" if p.get("full_steps") else ""
            parts.append(f"DeepCache (branch {p['branch']}, interval {p['interval']}{placed})")
        elif t["type"] == "compile":
            parts.append(COMPILE_LABELS.get(p.get("backend"), f"compile ({p.get('backend')})"))
        else:
            parts.append(t["type"].replace("_", " "))
    return " + ".join(parts) or "identity"


COMPILE_LABELS = {"onnx": "ONNX Runtime", "torch_whole": "torch.compile (whole)",
                  "torch_regional": "torch.compile (regional)", "tensorrt": "TensorRT"}
