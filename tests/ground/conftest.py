import pytest


@pytest.fixture(scope="module")
def tiny_sd():
    from planner.models import load_pipeline

    return load_pipeline("tiny-sd")
