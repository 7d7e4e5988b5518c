#!/usr/bin/env bash
# The single GPU-machine call (device tool: command `bash bench/gpu/run.sh`, carry [".whl"], timeout_s <= 540).
# Prepare here first with `bash bench/gpu/pack.sh` (make gpu-pack). There: no network, no `pip install -e .`;
# the wheels go to /tmp/site and the project is imported from the source tree (PYTHONPATH).
# Env: OUT (results folder; the device tool sets it), BUDGET_S (default 420), BENCH_ARGS (extra arguments).
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT="${OUT:-/tmp/gpu-out}"
SITE=/tmp/site
mkdir -p "$OUT"
PIP="python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target $SITE"
ls .whl/*.whl >/dev/null 2>&1 || { echo "run.sh: no .whl/*.whl (run bench/gpu/pack.sh here and carry .whl)"; exit 2; }
$PIP .whl/*.whl || { echo "run.sh: pip install of .whl failed"; exit 3; }
# typing_extensions: only when the device's copy is older than pydantic needs (4.16)
if ! python3 -c 'import importlib.metadata as m, sys; v = m.version("typing_extensions").split(".");
sys.exit(0 if (int(v[0]), int(v[1])) >= (4, 16) else 1)' && ls .whl/if-older/*.whl >/dev/null 2>&1; then
  $PIP .whl/if-older/*.whl || exit 3
fi
export PYTHONPATH="$SITE:$PWD" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1
{
  nvidia-smi -L
  nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,driver_version --format=csv,noheader
  python3 - <<'PY'
import importlib.metadata as m, platform, torch
print("python", platform.python_version(), "| torch", torch.__version__, "| cuda", torch.version.cuda,
      "| gpu", torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
      torch.cuda.get_device_capability(0) if torch.cuda.is_available() else "")
for name in ("diffusers", "transformers", "accelerate", "optuna", "pydantic", "torchao", "typing_extensions",
             "onnxruntime", "triton"):
    try:
        print(f"  {name} {m.version(name)}")
    except m.PackageNotFoundError:
        print(f"  {name} MISSING")
import diffusers, optuna, pydantic, planner, profiler, backends  # noqa: E401 - fail early, here
print("imports ok:", diffusers.__file__)
PY
} 2>&1 | tee "$OUT/env.txt"
# shellcheck disable=SC2086
python3 -m bench.gpu --out "$OUT/gpu.json" --budget-s "${BUDGET_S:-420}" ${BENCH_ARGS:-} 2>&1 | tee "$OUT/gpu.log"
rc=${PIPESTATUS[0]}
echo "run.sh: bench.gpu exit $rc; results in $OUT: $(ls "$OUT" | tr '\n' ' ')"
exit "$rc"
