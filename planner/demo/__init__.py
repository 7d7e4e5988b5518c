"""The built-in demo: models trained on scikit-learn's digits, tiny random-weight real architectures,
and what they bring to the planner (an anatomy adapter, FID features, a reference set, a classifier).

Importing this package registers, without importing diffusers yet:
* the built-in model names `digits-unet`, `digits-dit` and `tiny-<family>` (planner.models);
* the pipeline classes their folders name, so a saved demo pipeline loads like any diffusers folder;
* the `digits` feature network (planner.quality.features).
The demo pipelines' anatomy adapter registers itself when planner/demo/pipeline.py is imported, which
every demo pipeline object needs first.
"""
from __future__ import annotations

from pathlib import Path

WEIGHTS_DIR = Path(__file__).parent / "weights"
DEMO_MODELS = {"digits-unet": "DigitsUNetPipeline", "digits-dit": "DigitsDiTPipeline"}


def _load_demo(name: str):
    def load(dtype):
        from planner.models import _load_folder
        from ground.errors import PlannerError

        path = WEIGHTS_DIR / name
        if not (path / "model_index.json").exists():
            raise PlannerError(f"{name}: shipped weights missing at {path}; reinstall the package "
                               f"or retrain with `python -m planner.demo.train {name.split('-')[1]}`")
        return _load_folder(path, **({} if dtype is None else {"torch_dtype": dtype}))
    return load


def _load_tiny(family: str):
    def load(dtype):
        from ground.devices import cast_pipeline
        from planner.demo.tiny_pipelines import build_tiny_pipeline

        pipe = build_tiny_pipeline(family)
        return pipe if dtype is None else cast_pipeline(pipe, dtype)
    return load


def _pipeline_class(name: str):
    def resolve():
        from planner.demo import pipeline

        return getattr(pipeline, name)
    return resolve


def _digits_features():
    from planner.demo.features import DigitsFeatures

    return DigitsFeatures()


def _register() -> None:
    from planner.demo.tiny_pipelines import TINY_CLASSES, TINY_DESCRIPTIONS
    from planner.models import register_builtin, register_pipeline_class
    from planner.quality.features import register_features

    register_builtin("digits-unet", "UNet2DModel trained on digits, 16x16, class-conditional", _load_demo("digits-unet"),
                     DEMO_MODELS["digits-unet"])
    register_builtin("digits-dit", "DiTTransformer2DModel trained on digits, 16x16, class-conditional",
                     _load_demo("digits-dit"), DEMO_MODELS["digits-dit"])
    for family, description in TINY_DESCRIPTIONS.items():
        register_builtin(f"tiny-{family}", description, _load_tiny(family), TINY_CLASSES[family])
    for class_name in DEMO_MODELS.values():
        register_pipeline_class(class_name, _pipeline_class(class_name))
    register_features("digits", _digits_features)


_register()
