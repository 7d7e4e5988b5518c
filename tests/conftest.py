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


# The demo models' weights are shipped in the package: a missing file fails the test (load_pipeline names
# the missing folder and how to restore it), it never skips.
@pytest.fixture(scope="session")
def digits_unet():
    from planner.models import load_pipeline

    return load_pipeline("digits-unet")


@pytest.fixture(scope="session")
def digits_dit():
    from planner.models import load_pipeline

    return load_pipeline("digits-dit")


@pytest.fixture(scope="module")
def one_thread():
    """For modules of tiny models: on shared, busy cores a second intra-op thread only adds spin-waiting
    (measured 5-10x slower with 2 threads under load). Use with `pytestmark = usefixtures("one_thread")`."""
    from helpers import torch_threads

    with torch_threads(1):
        yield


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    # Tests never share or pollute the user's .planner-cache, and never reach the network: feature
    # weights are fetched only where a test serves them itself (tests/planner/test_weights.py).
    monkeypatch.setenv("PLANNER_CACHE", str(tmp_path / "planner-cache"))
    monkeypatch.setenv("PLANNER_OFFLINE", "1")
