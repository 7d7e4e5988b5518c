"""The GPU evidence call, checked on CPU: bench.gpu's dry run (tiny configs, same code paths) and the two
scripts of the device call (bench/gpu/pack.sh here, bench/gpu/run.sh there)."""
import json
import math
import re
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACK, RUN = ROOT / "bench" / "gpu" / "pack.sh", ROOT / "bench" / "gpu" / "run.sh"
MODELS = ("sd15", "pixart", "flux")
TECHNIQUES = ("fp8", "int8_weight_only", "deepcache", "fbcache", "teacache", "taylorseer", "tome", "todo")
COMPILES = ("compile_regional", "compile_whole", "compile_whole_ro", "compile_regional_ro")

# The lent GPU machine's Python packages ('Python packages already there' for nvidia-h100-x1 / nvidia-h200,
# read off its image 'cuda' on 2026-11-17): python3 is CPython 3.12 there.
DEVICE_HAS = frozenset("""
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build certifi
charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core cuda-pathfinder
cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock flatbuffers flax fonttools
formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize hypothesis idna
imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver
lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe
matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals
networkx ninja numba numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime
nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13
nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript
opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec patsy peft
pillow pip pluggy portalocker prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments
pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist
python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core scikit-image
scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham simplejson six
sortedcontainers statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile
tiktoken timm tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm
transformers treescope triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel
wrapt xarray xxhash yarl zipp
""".split())


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def packed(array: str) -> dict[str, str]:
    """{normalised name: version} of the NAME==VERSION lines of a bash array in pack.sh."""
    body = re.search(rf"^{array}=\((.*?)^\)", PACK.read_text(), re.S | re.M).group(1)
    specs = re.findall(r"^\s*([A-Za-z0-9_.-]+)==([0-9][0-9A-Za-z.]*)\s*(?:#|$)", body, re.M)
    return {norm(n): v for n, v in specs}


def test_scripts_are_valid_bash_and_offline():
    for script in (PACK, RUN):
        proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
    run = "\n".join(line for line in RUN.read_text().splitlines() if not line.lstrip().startswith("#"))
    assert "--no-index" in run and "pip install -e" not in run      # nothing reaches a network there
    assert "python3 -m bench.gpu" in run and 'PYTHONPATH="$SITE:$PWD"' in run
    assert "/.whl/" in PACK.read_text() and "info/exclude" in PACK.read_text()


def test_pack_lists_only_what_the_device_lacks():
    wheels, if_older = packed("WHEELS"), packed("IF_OLDER")
    assert {"diffusers", "optuna", "pydantic", "pydantic-core", "sqlalchemy", "alembic", "colorlog",
            "torchao"} <= set(wheels)
    assert not set(wheels) & DEVICE_HAS, "packs a package the device already has"
    assert set(if_older) <= DEVICE_HAS      # there, but maybe older than a packed wheel needs
    # the pins fall in the project's own ranges
    from packaging.requirements import Requirement

    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = project["dependencies"] + [d for extra in project["optional-dependencies"].values() for d in extra]
    for line in declared:
        req = Requirement(line)
        if norm(req.name) in wheels:
            assert req.specifier.contains(wheels[norm(req.name)]), (line, wheels[norm(req.name)])


def test_packed_wheels_are_valid_and_cover_their_requirements():
    folder = ROOT / ".whl"
    if not folder.is_dir():
        pytest.skip("no .whl/ here: run `bash bench/gpu/pack.sh` first")
    from packaging.requirements import Requirement

    wheels, if_older = packed("WHEELS"), packed("IF_OLDER")
    env = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
           "platform_system": "Linux", "platform_machine": "x86_64", "implementation_name": "cpython",
           "platform_python_implementation": "CPython", "os_name": "posix", "extra": ""}
    files = sorted(folder.glob("*.whl")) + sorted(folder.glob("if-older/*.whl"))
    found, missing, total = {}, [], 0
    for path in files:
        parts = path.stem.split("-")     # name-version[-build]-python-abi-platform
        found[norm(parts[0])] = parts[1]
        assert parts[-3] in ("py3", "py2.py3", "cp312", "cp310"), path.name      # installable by CPython 3.12
        with zipfile.ZipFile(path) as z:
            assert z.testzip() is None, path.name
            meta = z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode()
        total += path.stat().st_size
        for line in re.findall(r"^Requires-Dist: (.+)$", meta, re.M):
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate(env):
                if norm(req.name) not in DEVICE_HAS | set(wheels):
                    missing.append(f"{path.name} needs {line}")
    assert found == {**wheels, **if_older}, "one wheel per pinned package, nothing else"
    assert not missing, missing
    assert total < 40 * 1024 * 1024


@pytest.mark.timeout(300)
def test_cpu_dry_run(tmp_path):
    out = tmp_path / "gpu.json"
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "bench.gpu", "--device", "cpu", "--tiny", "--budget-s", "120",
                           "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=240)
    wall = time.monotonic() - start
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert doc["complete"] and doc["elapsed_s"] < 120 + 25, (doc["elapsed_s"], wall)
    assert "params (M)" in proc.stdout                               # the summary table, printed last
    expected = [f"{m}.{s}" for m in MODELS for s in ("build", "profiler", "techniques")] + ["optimize", "prediction"]
    expected += [f"{m}.{c}" for c in COMPILES for m in MODELS]
    for name in expected:   # every section: measured, or skipped / failed with its reason
        entry = doc["sections"][name]
        assert entry["status"] in ("ok", "skipped", "error") and (entry["status"] == "ok" or entry["reason"]), name
    measured = []
    for m in MODELS:
        model = doc["models"][m]
        assert doc["sections"][f"{m}.build"]["status"] == "ok"
        assert model["info"]["denoiser_params"] > 0 and model["info"]["params"][model["info"]["denoiser"]] > 0
        for dtype in ("fp16", "bf16"):
            assert model["baseline"][dtype]["denoiser_ms"] > 0
        if doc["sections"][f"{m}.profiler"]["status"] == "ok":
            prof = model["profiler"]
            assert prof["top_level_sum_ms"] > 0 and 0 < prof["block_sum_ratio"] < 1.5
            assert prof["overhead_ratio"] > 0 and prof["top_blocks"]
        for label in TECHNIQUES + COMPILES:
            section = doc["sections"].get(f"{m}.{label}", doc["sections"][f"{m}.techniques"])
            row = model["techniques"].get(label, {"skipped": section.get("reason")})
            assert "speedup" in row or row.get("error") or row.get("skipped"), (m, label, row)
            if "speedup" in row and math.isfinite(row["speedup"]) and math.isfinite(row["rel_l2"]):
                measured.append((m, label))
    assert measured, "no technique was measured"
    compiled = doc["models"]["sd15"]["techniques"].get("compile_regional", {})
    if "speedup" in compiled:   # compile time is kept apart from the per-call latency
        assert compiled["build_s"] > 0 and compiled["warmup_ms"]
    assert any(doc["models"][m].get("profiler") for m in MODELS)   # the per-block sum is reported
    if doc["sections"]["optimize"]["status"] == "ok":
        assert doc["optimize"]["returncode"] is not None
        assert "verdict" in doc["gate"] or doc["gate"].get("skipped")
    print(f"dry run: {wall:.1f} s wall; measured {len(measured)} technique rows")
