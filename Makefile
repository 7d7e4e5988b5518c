# Two commands on a fresh machine:  `make demo`  and  `make test`.
# torch 2.13.0 is installed first, on its own, so that pip takes the CPU wheel and never pulls a CUDA build.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
TORCH  ?= torch==2.13.0

.PHONY: install demo test test-slow bench peers oracle oracle-large gpu-pack clean

$(BIN)/planner: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e ".[dev,postgres]"
	@touch $@

install: $(BIN)/planner

demo: install
	$(BIN)/planner optimize --budget fid+2 digits-unet
	$(BIN)/planner show digits-unet.plan.yaml

test: install
	$(BIN)/python -m pytest -q -m "not slow and not gpu"

test-slow: install
	$(BIN)/python -m pytest -q -m slow

# Benchmarks against the peers (tuned peers, hand stack with torch.compile, plans: 19 minutes on 2 free cores)
# and against an exhaustive grid. PEERS_ARGS: e.g. --update-readme, --tiny
peers: install
	$(BIN)/pip install -q -e ".[dev,peers]"
	$(BIN)/python -m bench.peers --compile --plan 'digits-dit:psnr>=30=plans/digits-dit-psnr30.yaml' $(PEERS_ARGS)

oracle: install
	$(BIN)/python -m bench.oracle

# 216 points: the grid on which the planner's 20 trials are <= 10% of the oracle's (14 minutes on 2 free cores)
oracle-large: install
	$(BIN)/python -m bench.oracle --grid large --workers 2

# The wheels a lent GPU machine lacks, into .whl/ (ignored by git); then one device call runs
# `bash bench/gpu/run.sh` with carry [".whl"]. See the README's "GPU evidence in one call".
gpu-pack:
	bash bench/gpu/pack.sh

clean:
	rm -rf $(VENV) .planner-cache digits-unet.plan.*
