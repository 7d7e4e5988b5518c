import os
import sys
from pathlib import Path

import pytest
import torch

torch.set_num_threads(int(os.environ.get("PLANNER_TEST_THREADS", "2")))  # 1 when the machine is shared
sys.path.insert(0, str(Path(__file__).parent))  # so tests can `import helpers`


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def digits_unet():
    from helpers import needs_weights  # noqa: F401
    from planner.demo import WEIGHTS_DIR
    from planner.models import load_pipeline

    if not (WEIGHTS_DIR / "digits-unet" / "model_index.json").exists():
        pytest.skip("digits-unet weights not trained yet")
    return load_pipeline("digits-unet")


@pytest.fixture(scope="session")
def digits_dit():
    from planner.demo import WEIGHTS_DIR
    from planner.models import load_pipeline

    if not (WEIGHTS_DIR / "digits-dit" / "model_index.json").exists():
        pytest.skip("digits-dit weights not trained yet")
    return load_pipeline("digits-dit")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    # Tests never share or pollute the user's .planner-cache.
    monkeypatch.setenv("PLANNER_CACHE", str(tmp_path / "planner-cache"))
