"""Property-based fuzzing of plan files: every malformed plan is rejected with one line, nothing runs."""
import subprocess
import sys

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from planner.plan import PlanError, parse_plan, plan_to_yaml

VALID = {
    "version": 1,
    "model": {"name": "digits-unet", "pipeline": "DigitsUNetPipeline", "fingerprint": "sha256:0123456789abcdef"},
    "environment": {"device": "cpu", "device_name": "x86_64", "torch": "2.13.0", "diffusers": "0.42.1", "planner": "0.1.0"},
    "shapes": {"batch": 16, "resolution": 16, "steps": 10, "guidance_scale": None},
    "budget": "fid+2",
    "techniques": [{"type": "sampler", "version": 1, "params": {"name": "dpmpp_2m", "steps": 10}}],
    "measured": None,
    "provenance": {"command": "planner optimize --budget fid+2 digits-unet", "created": "2026-11-22T00:00:00+00:00"},
}

scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-10**30, max_value=10**30),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=30))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                        st.dictionaries(st.text(max_size=10), inner, max_size=4)),
                      max_leaves=12)
PATHS = [("version",), ("model", "fingerprint"), ("model", "name"), ("environment", "device"), ("shapes", "batch"),
         ("shapes", "steps"), ("shapes", "resolution"), ("budget",), ("techniques",), ("techniques", 0, "type"),
         ("techniques", 0, "version"), ("techniques", 0, "params"), ("techniques", 0, "params", "steps"),
         ("techniques", 0, "params", "name"), ("provenance",), ("measured",)]
TAGS = ["!!python/object/apply:os.system ['echo pwned']", "!!python/name:os.system", "!!binary AAAA",
        "!!python/object/new:subprocess.Popen [['true']]", "&a [*a]"]


def _mutated(path, value):
    import copy

    data = copy.deepcopy(VALID)
    target = data
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return data


def _check_rejected_or_valid(text: str) -> None:
    try:
        parse_plan(text)
    except PlanError as exc:
        message = str(exc)
        assert message and "\n" not in message and "Traceback" not in message


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(path=st.sampled_from(PATHS), value=values)
def test_wrong_values_are_rejected_in_one_line(path, value):
    _check_rejected_or_valid(yaml.safe_dump(_mutated(path, value)))


@settings(max_examples=60, deadline=None)
@given(cut=st.integers(min_value=0, max_value=2000))
def test_truncated_plans_are_rejected_in_one_line(cut):
    text = yaml.safe_dump(VALID, sort_keys=False)
    _check_rejected_or_valid(text[:cut])


@settings(max_examples=30, deadline=None)
@given(key=st.text(min_size=1, max_size=12).filter(lambda k: k not in VALID), tag=st.sampled_from(TAGS))
def test_unknown_fields_and_tags_are_rejected(key, tag, tmp_path_factory):
    data = dict(VALID)
    data[key] = 1
    try:
        parse_plan(yaml.safe_dump(data))
        raise AssertionError("unknown field accepted")
    except PlanError as exc:
        assert "\n" not in str(exc)
    _check_rejected_or_valid(f"version: 1\nmodel: {tag}\n")


def test_huge_and_empty_inputs():
    for text in ["", "   \n", "~", "[]", "1" * 10000, "version: " + "9" * 5000, "{" * 5000]:
        _check_rejected_or_valid(text)


def test_cli_rejects_fuzzed_file_with_one_line_and_nonzero_exit(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(_mutated(("techniques", 0, "params", "steps"), "many")))
    result = subprocess.run([sys.executable, "-m", "planner.cli", "validate", str(bad)], capture_output=True, text=True)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "techniques[0].params.steps" in lines[0]


def test_valid_plan_round_trips():
    plan = parse_plan(yaml.safe_dump(VALID))
    assert parse_plan(plan_to_yaml(plan)) == plan
