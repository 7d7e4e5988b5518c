"""Plan files as a hostile or careless author writes them: bounded in cost by their bytes, refused in
one line naming the field, never read from anything but a regular file."""
import copy
import math
import os
import re
import threading
import time

import pytest
import yaml

from planner.plan import PlanError, load_plan, parse_plan, plan_to_yaml

SHIPPED = "plans/digits-unet.yaml"


def _data():
    return yaml.safe_load(open(SHIPPED).read())


def _text(mutate) -> str:
    data = _data()
    mutate(data)
    return yaml.safe_dump(data)


def _rejects(text: str, needle: str) -> None:
    with pytest.raises(PlanError) as err:
        parse_plan(text)
    message = str(err.value)
    assert needle in message and "\n" not in message, message


def test_aliases_inside_a_valid_field_are_refused_fast():
    # 40 levels of doubling: 2**40 steps once expanded; refused before anything expands
    lines = ["a0: &a0 [1, 2]"] + [f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}]" for i in range(1, 40)]
    text = re.sub(r"steps: (\d+)", r"steps: &s \1", plan_to_yaml(parse_plan(open(SHIPPED).read())), count=1)
    assert "&s" in text
    text += "\nx: *s\n"
    start = time.time()
    _rejects("\n".join(lines) + "\n", "aliases are not allowed")
    _rejects(text, "aliases are not allowed")
    assert time.time() - start < 1.0


def test_node_count_is_bounded():
    _rejects("[" + ", ".join(["1"] * 250_000) + "]", "more than 200000 YAML nodes")


def test_loose_values_are_refused():
    def set_(path, value):
        def mutate(d):
            target = d
            for k in path[:-1]:
                target = target[k]
            target[path[-1]] = value
        return mutate

    _rejects(_text(set_(("shapes", "steps"), True)), "shapes.steps")
    _rejects(_text(set_(("shapes", "batch"), "8")), "shapes.batch")
    steps = next(t["params"]["steps"] for t in _data()["techniques"] if t["type"] == "sampler")
    _rejects(_text(set_(("shapes", "steps"), steps + 4)),
             f"shapes.steps: {steps + 4} differs from the sampler's {steps} steps")
    _rejects(_text(set_(("measured", "metrics", 0, "ci_level"), 1.5)), "ci_level")
    _rejects(_text(set_(("measured", "speedup"), math.nan)), "measured.speedup")
    _rejects(_text(set_(("measured", "speedup_ci"), [12.0, 3.0])), "speedup_ci")
    _rejects(_text(set_(("measured", "metrics", 0, "ci_low"), 5.0)), "ci_low must not exceed ci_high")
    _rejects(_text(set_(("measured", "metrics", 0, "value"), math.inf)), "finite")
    _rejects(_text(set_(("budget",), "fid+x")), "budget")
    _rejects(_text(lambda d: d["techniques"].append(copy.deepcopy(d["techniques"][0]))), "sampler appears 2 times")
    _rejects(_text(set_(("techniques", 0, "params", "steps"), True)), "steps")
    _rejects(_text(set_(("model", "name\nEVIL"), "x")), "name\\nEVIL")


def test_only_regular_files_are_read(tmp_path):
    with pytest.raises(PlanError, match="not a regular file"):
        load_plan("/dev/zero")
    fifo = tmp_path / "plan.yaml"
    os.mkfifo(fifo)
    result = []
    reader = threading.Thread(target=lambda: result.append(pytest.raises(PlanError, load_plan, fifo)))
    reader.start()
    reader.join(5)
    assert result, "a FIFO must be refused, not waited on"
    link = tmp_path / "link.yaml"
    link.symlink_to("/dev/urandom")
    with pytest.raises(PlanError, match="not a regular file"):
        load_plan(link)
    big = tmp_path / "big.yaml"
    big.write_bytes(b"#" * (4 * 1024 * 1024 + 1))
    with pytest.raises(PlanError, match="larger than"):
        load_plan(big)


def test_show_prints_no_terminal_escapes(tmp_path, capsys):
    from planner.cli import main

    path = tmp_path / "p.yaml"
    text = open(SHIPPED).read().replace("name: digits-unet", 'name: "digits-unet\\e[2J\\e[31m"', 1)
    path.write_text(text)
    assert main(["show", str(path)]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\\x1b[2J" in out


def test_study_names_stay_in_the_study_folder(capsys):
    from planner.cli import main

    assert main(["optimize", "digits-unet", "--budget", "fid+2", "--study-name", "../escape"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--study-name" in err[0]
