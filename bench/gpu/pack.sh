#!/usr/bin/env bash
# Wheels that the lent GPU machine lacks, into .whl/ at the repo root, for `bash bench/gpu/run.sh` there.
#
# That machine has no network; its image (python3 = CPython 3.12, torch 2.11.0+cu130, transformers 5.17,
# accelerate, safetensors, onnx, onnx-ir, onnxscript, onnxruntime 1.30, scikit-learn, scikit-image, scipy,
# numpy 2.5, matplotlib, tqdm, pyyaml, typer, huggingface_hub 1.33, regex, pillow, packaging, markupsafe,
# zipp, typing-extensions, ...) lacks the packages below. The device call carries .whl (carry: [".whl"]);
# the working tree that travels (tracked + untracked-not-ignored files + carried paths) is capped at 64 MiB,
# so the wheels must stay well under 40 MiB. Versions: pyproject.toml's ranges, pinned to this venv's.
#
# Left out on purpose:
#   tensorrt   on PyPI tensorrt-cu13-libs 11.4 is a 15 KB sdist that fetches the libraries (libnvinfer and
#              co., far over 64 MiB) from NVIDIA's own index at install time: they cannot travel in 64 MiB,
#              and the machine has no network. TensorRT stays unmeasured (bench.gpu says so in its JSON).
#   greenlet   SQLAlchemy 2.1 lists it only under its `asyncio` extra.
#   psycopg2   only for `--storage postgresql://`, which the device run does not use.
#
# Usage: bash bench/gpu/pack.sh     (or `make gpu-pack`); prints the total and fails above 40 MiB.
set -euo pipefail
cd "$(dirname "$0")/../.."

# Packages the device lacks: NAME==VERSION   # wheel size in bytes, what needs it
WHEELS=(
  diffusers==0.42.1           # 6355908  the pipelines and models (pyproject: >=0.35,<0.50)
  optuna==5.0.0               #  442352  the search (pyproject: >=4.0)
  alembic==1.20.1             #  270355  optuna's storage migrations
  SQLAlchemy==2.1.9           # 4747542  optuna's RDB storage (cp312 manylinux wheel)
  Mako==1.4.3                 #   80164  alembic's templates
  colorlog==6.12.0            #   12239  optuna's logging
  pydantic==2.14.4            #  494865  technique configs and the plan schema (pyproject: >=2.5)
  pydantic_core==2.50.5       # 2264846  pydantic's core (cp312 manylinux wheel)
  annotated-types==0.8.0      #   13427  pydantic
  typing-inspection==0.4.5    #   14874  pydantic
  importlib_metadata==10.2.0  #   34109  diffusers
  lazy-importer==0.1.0        #   12580  importlib_metadata 10 (python < 3.15)
  torchao==0.17.0             # 3206172  fp8 / int8 weight-only; 0.17 is the release for torch 2.11
)                             # total 17949433 bytes = 17.1 MiB
# torchao: 0.16.0's table of prebuilt pairs ends at torch 2.10/2.11.dev; 0.17.0 (2026-03-30) loads its
# C++ extensions for torch >= 2.11 (read from torchao/__init__.py of each wheel); 0.18.0 also accepts
# 2.11 but was released with a later torch, so 0.17.0 is the match for the device's 2.11.0.

# Present on the device but possibly older than a packed wheel needs (pydantic 2.14 and pydantic-core
# need typing-extensions >= 4.16.0): run.sh installs these only when the device's copy is older.
IF_OLDER=(
  typing_extensions==4.16.0   #   45571
)

download() {   # dest, NAME==VERSION
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
    -d "$1" "$2"
}

# .whl/ must never be committed, nor travel unless carried: ignore it locally (.gitignore is not ours).
exclude="$(git rev-parse --git-path info/exclude)"
mkdir -p "$(dirname "$exclude")"
grep -qxF '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >>"$exclude"

# One version of each package: two stop the whole install there, so start from an empty folder.
rm -rf .whl
mkdir -p .whl/if-older
for spec in "${WHEELS[@]}"; do download .whl "$spec"; done
for spec in "${IF_OLDER[@]}"; do download .whl/if-older "$spec"; done

ls -l .whl/*.whl .whl/if-older/*.whl | awk '{printf "%10d  %s\n", $5, $9}'
total=$(find .whl -type f -name '*.whl' -printf '%s\n' | awk '{s += $1} END {print s}')
# what travels: tracked and untracked-not-ignored files (a file deleted in the work tree is skipped) + .whl
tree=$( { git ls-files -z --cached --others --exclude-standard; printf '.whl\0'; } |
        du -cb --files0-from=- 2>/dev/null | tail -1 | cut -f1 || true)
awk -v w="$total" -v t="$tree" -v n="$(find .whl -type f -name '*.whl' | wc -l)" 'BEGIN {
  printf "wheels: %d bytes (%.1f MiB) in %d files; with the working tree that travels: %.1f MiB (limit 64)\n",
         w, w / 1048576, n, t / 1048576 }'
if [ "$total" -gt $((40 * 1024 * 1024)) ]; then echo "pack.sh: wheels exceed 40 MiB" >&2; exit 1; fi
if [ "$tree" -gt $((64 * 1024 * 1024)) ]; then echo "pack.sh: working tree + wheels exceed 64 MiB" >&2; exit 1; fi
