"""Feature-network weights fetched on first use from their standard public location, checked against a
pinned sha256, converted to safetensors and kept in the cache root's `weights/` folder.

A state dict published as a PyTorch file is read with `torch.load(weights_only=True)` (PyTorch's
restricted loader: tensors and plain containers only, nothing executed) and saved as safetensors; every
later load reads the safetensors file. With `$PLANNER_OFFLINE` set, or no network, the error is one line
naming the file and where to put it.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from ground.cache import cache_dir
from ground.errors import PlannerError, first_line
from ground.files import atomic_path

OFFLINE_ENV = "PLANNER_OFFLINE"
MAX_DOWNLOAD = 1 << 30
TIMEOUT_S = 60


@dataclass(frozen=True)
class WeightsFile:
    name: str       # the safetensors file in the cache's weights/ folder
    url: str
    sha256: str     # of the published file at `url`
    what: str


INCEPTION = WeightsFile(
    name="pt_inception-2015-12-05.safetensors",
    url="https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth",
    sha256="6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2",
    what="the FID Inception-v3 (pytorch-fid's port of the 2015-12-05 TensorFlow graph)")


def offline() -> bool:
    return os.environ.get(OFFLINE_ENV, "0") not in ("", "0", "false", "False")


def fetch(weights: WeightsFile) -> Path:
    """The cached safetensors file of `weights`, downloading and converting it first if needed."""
    target = cache_dir("weights") / weights.name
    if target.exists():
        return target
    where = (f"download {weights.url} (sha256 {weights.sha256[:12]}...), convert it with "
             f"`python -m planner.quality.weights FILE`, or place a safetensors copy at {target}")
    if offline():
        raise PlannerError(f"{weights.what} is not in the cache and ${OFFLINE_ENV} is set: {where}")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{weights.name}.", suffix=".download", dir=target.parent)
    os.close(fd)
    raw = Path(name)
    try:
        digest = _download(weights.url, raw, where)
        if digest != weights.sha256:
            raise PlannerError(f"{weights.url}: sha256 {digest[:16]}... is not the pinned {weights.sha256[:16]}...; "
                               f"not using it ({where})")
        convert(raw, target)
    finally:
        raw.unlink(missing_ok=True)
    return target


def _download(url: str, path: Path, where: str) -> str:
    digest, size = hashlib.sha256(), 0
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response, open(path, "wb") as out:  # noqa: S310
            while chunk := response.read(1 << 20):
                size += len(chunk)
                if size > MAX_DOWNLOAD:
                    raise PlannerError(f"{url}: larger than {MAX_DOWNLOAD} bytes; not the expected weights")
                digest.update(chunk)
                out.write(chunk)
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        raise PlannerError(f"cannot download {url} ({first_line(exc, 120)}): {where}") from None
    return digest.hexdigest()


def convert(source: Path, target: Path) -> Path:
    """A published state dict (PyTorch file, read with weights_only=True) saved as safetensors."""
    import torch
    from safetensors.torch import save_file

    try:
        state = torch.load(str(source), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - anything unreadable is refused the same way
        raise PlannerError(f"{source}: not a plain state dict of tensors ({first_line(exc, 120)})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise PlannerError(f"{source}: not a plain state dict of tensors")
    with atomic_path(target) as tmp:
        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp))
    return target


def main(argv=None) -> int:
    """`python -m planner.quality.weights FILE`: convert a downloaded file into the cache (offline machines)."""
    import sys

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m planner.quality.weights pt_inception-2015-12-05-6726825d.pth", file=sys.stderr)
        return 2
    source = Path(args[0])
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    if digest != INCEPTION.sha256:
        print(f"planner: error: {source}: sha256 {digest[:16]}... is not {INCEPTION.what}'s", file=sys.stderr)
        return 2
    print(f"wrote {convert(source, cache_dir('weights') / INCEPTION.name)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
