"""Property-based fuzzing of the command line itself (issue 14: "one line, exit 2, for every bad input").

Every command gets hypothesis-generated argument vectors: its real flags (read from the argparse parser,
so a new flag is fuzzed without touching this file), in random subsets and orders, with hostile values
(negative, zero and huge numbers, nan/inf, empty strings, newlines and terminal escape codes, paths to a
missing folder, an unwritable place, /dev/zero, a FIFO, a folder, a valid shipped plan, malformed and
valid budgets), plus random extra tokens. Each vector runs in-process through `planner.cli.main`.

Long work never starts from fuzzed input: loading a model raises `ReachedModelLoad`, which counts as "the
input passed every check that can be done before loading". Anything else must end in exit code 0, 1, 2
or 130 with no traceback; exit 2 prints one line (`planner: error: ...`, or argparse's
`planner CMD: error: ...`); no terminal control character from the input reaches either stream; and no
file is left half-written (`*.tmp`), created, or changed by a command that did not finish its work.

Longer than ~400 lines because the argument strategies of every command live beside the one property
they feed; split, the strategies and the command table would have to be kept in step across files.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import traceback
import warnings
from collections import Counter
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import planner.cli
import planner.models

ROOT = Path(__file__).resolve().parents[2]
PLAN_UNET = ROOT / "plans" / "digits-unet.yaml"
PLAN_DIT = ROOT / "plans" / "digits-dit.yaml"
COMMANDS = ("optimize", "profile", "generate", "evaluate", "run", "gate", "show", "validate", "plan-from-study")
EXAMPLES_PER_COMMAND = int(os.environ.get("PLANNER_FUZZ_EXAMPLES", "40"))   # x 9 commands = 360 per run
EXIT_CODES = {0, 1, 2, 130}
STUDY = "fuzz-study"               # a study `planner optimize` could have written: plan-from-study reaches the load
CONTROL = {chr(c) for c in range(32) if chr(c) not in "\n\t"} | {"\x7f", "\x9b"}


class ReachedModelLoad(BaseException):
    """Raised where a model would load: the input passed every check that can be made before loading.
    A BaseException, so that no `except Exception` on the way can turn it into something else."""


def _refuse_load(*args, **kwargs):
    raise ReachedModelLoad(args[0] if args else kwargs.get("model"))


# ------------------------------------------------------------------------------------------- the world
# Files and folders the vectors point at, made once per module under a temporary folder that is also the
# working directory of every vector (so relative outputs land there and can be checked).

class World:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.cache = root / "cache"           # $PLANNER_CACHE for every vector
        self.storage = root / "storage"       # where --storage databases and journals may be created
        self.folder = root / "a-folder"
        self.folder.mkdir()
        (self.folder / "img.png").write_bytes(b"not really a png")
        self.file = root / "a-file.txt"
        self.file.write_text("just text\n")
        self.fifo = root / "a-fifo"
        os.mkfifo(self.fifo)
        self.empty = root / "empty.yaml"
        self.empty.write_text("")
        self.garbage = root / "garbage.yaml"
        self.garbage.write_text("version: [1\nmodel: {{{\n\x1b[31m")
        self.not_utf8 = root / "latin1.yaml"
        self.not_utf8.write_bytes(b"version: 1\nname: \xff\xfe\n")
        other = PLAN_UNET.read_text().replace("digits-unet", "digits-dit", 1)
        self.other_model_plan = root / "other-model.yaml"
        self.other_model_plan.write_text(other)
        self.no_measured = root / "no-measured.yaml"
        text = PLAN_UNET.read_text()
        self.no_measured.write_text(text[:text.index("measured:")] + "measured: null\n" + text[text.index("provenance:"):])
        self.prompts_txt = root / "prompts.txt"
        self.prompts_txt.write_text("a cat\na dog\n\x1b[2Jclear screen\n")
        self.prompts_jsonl = root / "labels.jsonl"
        self.prompts_jsonl.write_text('{"class_label": 3}\n{"class_label": 7, "seed": 5}\n')
        self.bad_jsonl = root / "bad.jsonl"
        self.bad_jsonl.write_text('{"class_label": -5}\nnot json\n{"prompt": 3}\n')
        self.huge_label = root / "huge.jsonl"
        self.huge_label.write_text('{"class_label": 99999999999999999999999}\n{"seed": -1}\n')
        self.bad_pipeline = root / "bad-pipeline"
        self.bad_pipeline.mkdir()
        (self.bad_pipeline / "model_index.json").write_text('{"_class_name": "os.system"}')
        self.odd_pipeline = root / "odd-pipeline"
        self.odd_pipeline.mkdir()
        (self.odd_pipeline / "model_index.json").write_text("[1, 2")
        os.makedirs(self.storage)
        self._make_study()

    def _make_study(self) -> None:
        import optuna
        from optuna.storages.journal import JournalFileBackend

        studies = self.cache / "studies"
        studies.mkdir(parents=True)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        storage = optuna.storages.JournalStorage(JournalFileBackend(str(studies / f"{STUDY}.journal")))
        study = optuna.create_study(study_name=STUDY, storage=storage)
        study.set_user_attr("settings", {"name": "digits-unet", "budget": "fid+2", "batch": 8, "seed": 0})

    # value pools -------------------------------------------------------------------------------------
    def hostile_paths(self) -> list[str]:
        return [str(self.root / "missing" / "deeper" / "thing"), "missing-folder/x", str(self.folder),
                str(self.file), str(self.fifo), "/dev/zero", "/dev/null", "/proc/self/x.png",
                str(self.file / "below-a-file.png"), "", ".", "..", str(PLAN_UNET), "a\nb.png", "\x1b[31mred.png",
                "\udcff.png"]

    def outputs(self, suffix: str) -> list[str]:
        return [f"out{suffix}", f"sub/dir/out{suffix}", f"missing-folder/out{suffix}", f"/proc/self/out{suffix}",
                str(self.file / f"out{suffix}"), f"line\nbreak{suffix}", f"\x1b[2J{suffix}", "out.txt",
                str(PLAN_UNET), str(self.root / "a-file.txt")] + self.hostile_paths()

    def plans(self) -> list[str]:
        return [str(PLAN_UNET), str(PLAN_DIT), str(self.empty), str(self.garbage), str(self.not_utf8),
                str(self.other_model_plan), str(self.no_measured)] + self.hostile_paths()

    def models(self) -> list[str]:
        return ["digits-unet", "digits-dit", "tiny-sd", "tiny-ddpm", "someone/some-model", "a/b/c", "nope",
                " ", str(self.bad_pipeline), str(self.odd_pipeline), "~", "~nobody-here/x",
                "digits-unet\n", "\x1b]0;title\x07"] + self.hostile_paths()

    def prompts(self) -> list[str]:
        return [str(self.prompts_txt), str(self.prompts_jsonl), str(self.bad_jsonl), str(self.huge_label),
                str(self.root / "missing.txt"), str(self.root / "missing.jsonl"), str(self.file),
                str(self.folder) + ".txt", "/dev/zero", str(self.fifo)] + self.hostile_paths()

    def storages(self) -> list[str]:
        return ["", "bogus://x", "journal:" + str(self.storage / "j.log"), "sqlite:///" + str(self.storage / "s.db"),
                "sqlite:////proc/self/s.db", "postgresql://u:secret@127.0.0.1:1/db", "mysql://u@127.0.0.1:1/db",
                "journal:", "sqlite://", "\x1b[31m", "postgresql://\n"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return World(tmp_path_factory.mktemp("cli-fuzz"))


# ------------------------------------------------------------------------------------------ strategies

def _text(max_size: int = 20) -> st.SearchStrategy[str]:
    # A real argv cannot hold NUL; '/' and '~' are left out so a random token never names a place outside
    # the world (check_writable creates missing parent folders).
    return st.text(st.characters(blacklist_characters="\x00/~", blacklist_categories=("Cs",)), max_size=max_size)


HOSTILE_TEXT = ["", " ", "-", "--", "\n", "a\nb", "\x1b[31mred\x1b[0m", "\x1b[2J", "\r", "\x07", "\t", "\x7f",
                "\x9b31m", "é", "\u202e", "\udcff", "x" * 5000, "nan", "-5", "0", "1e999"]


def _ints() -> st.SearchStrategy[str]:
    """Integers argparse accepts, from the hostile ends (and a few spellings `int()` takes)."""
    special = ["0", "-1", "1", "2", "8", "-0", str(2**31), str(2**31 - 1), str(2**63), str(10**30), "-" + str(10**30),
               " 7", "1_000", "\u0663", "\n3", "3\n"]
    return st.one_of(st.sampled_from(special), st.integers(-10**6, 10**6).map(str),
                     st.integers(-2**70, 2**70).map(str))


def _floats() -> st.SearchStrategy[str]:
    special = ["nan", "-nan", "inf", "-inf", "infinity", "-5", "0", "-0", "1e308", "1e999", "-1e999", "0.5", "1",
               "0.999999", "100", "101", "1e-320", "1_0", " 2 "]
    return st.one_of(st.sampled_from(special), st.floats(allow_nan=True, allow_infinity=True).map(repr))


NOT_NUMBERS = ["", "x", "1e3", "1.5", "0x10", "0x1p3", "nan", "--", "1,5"]


BUDGETS_OK = ["fid+2", "psnr>=30", "fid+2,acc-1", "ssim>=0.9", "lpips<=0.1", "kid+0.001", "acc>=90", "fid*1.1",
              "clip-0.5", "fid<=10"]
BUDGETS_BAD = ["fid+", "psnr>=x", "", ",", "fid+2,,", "fid+nan", "fid+inf", "fid*-1", "bogus+2", "fid+2\n",
               "\x1b[2J", "fid++2", "psnr>=", ">=30", "fid+2,fid+2", "acc-101", "psnr>=1e999", "fid + 2",
               "FID+2", "fid+2;rm -rf /", "fid+-2", "ssim>=2"]
DEVICES = ["cpu", "cuda", "cuda:0", "cuda:99", "mps", "", "tpu", "cpu:0", " cpu ", "cuda:-1", "\x1b[31m", "CPU",
           "cuda:1e3", "meta"]
TECHNIQUES = ["", "sampler", "cache,quant", "bogus", ",,,", "sampler,compile", "tokens", "all", "sampler,sampler",
              "\n", "cache;quant"]
FEATURES = ["inception", "digits", "nonsense", "/dev/zero"]


def value_strategy(world: World, dest: str, action: argparse.Action, loose: bool) -> st.SearchStrategy[str]:
    """Hostile values for one flag: its kind's pool (mostly values argparse takes, so that the commands'
    own checks run), and when `loose`, sometimes anything at all."""
    anything = st.one_of(st.sampled_from(HOSTILE_TEXT), st.sampled_from(NOT_NUMBERS), _text())
    if action.choices:
        own = st.sampled_from(list(action.choices) + ["", "DDIM", "fp64", "\x1b[31m"])
    elif dest in ("model",):
        own = st.one_of(st.sampled_from(["digits-unet", "digits-dit"]), st.sampled_from(world.models()))
    elif dest in ("plan", "plans"):
        own = st.one_of(st.sampled_from([str(PLAN_UNET), str(PLAN_DIT)]), st.sampled_from(world.plans()))
    elif dest == "budget":
        own = st.one_of(st.sampled_from(BUDGETS_OK), st.sampled_from(BUDGETS_BAD), _text(12))
    elif dest == "prompts":
        own = st.one_of(st.sampled_from([str(world.prompts_jsonl)]), st.sampled_from(world.prompts()))
    elif dest in ("out", "junit", "json"):
        suffix = {"junit": ".xml", "json": ".json"}.get(dest, ".png")
        own = st.sampled_from(world.outputs(suffix) + world.outputs(".json") + world.outputs(".yaml"))
    elif dest in ("reference", "cache_dir"):
        own = st.sampled_from([str(world.folder), str(world.root / "cache-here")] + world.hostile_paths())
    elif dest == "features":
        own = st.sampled_from(FEATURES + world.hostile_paths())
    elif dest == "device":
        own = st.one_of(st.just("cpu"), st.sampled_from(DEVICES))
    elif dest == "techniques":
        own = st.sampled_from(TECHNIQUES)
    elif dest == "storage":
        own = st.sampled_from(world.storages())
    elif dest == "study_name":
        own = st.sampled_from([STUDY, STUDY, "missing-study", "", "a b", "\x1b[31m", "x" * 300, "..", "a\nb"])
    elif action.type is int:
        own = _ints()
    elif action.type is not None and action.type is not str and not isinstance(action.type, type):
        own = _floats()              # float, positive_float, guidance
    elif action.type is float:
        own = _floats()
    else:
        own = anything
    return st.one_of(own, own, anything) if loose else own


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = planner.cli.build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


SUBPARSERS = _subparsers()


@st.composite
def argv_for(draw, world: World, command: str) -> list[str]:
    sub = SUBPARSERS[command]
    positionals = [a for a in sub._actions if not a.option_strings]
    optionals = [a for a in sub._actions if a.option_strings and not isinstance(a, argparse._HelpAction)]
    argv: list[str] = [command]
    loose = draw(st.integers(0, 2)) == 0               # a third of the vectors: anything goes, argparse refuses most
    for action in positionals:
        if loose and draw(st.integers(0, 9)) == 0:
            continue                                   # a missing positional: argparse's one line
        count = draw(st.integers(1, 3)) if action.nargs in ("+", "*") else 1
        for _ in range(count):
            argv.append(draw(value_strategy(world, action.dest, action, loose)))
    chosen = draw(st.lists(st.sampled_from(optionals), max_size=7, unique_by=lambda a: a.dest)) if optionals else []
    for action in optionals:                           # required flags (--budget, --study-name): nearly always
        if action.required and action not in chosen and draw(st.integers(0, 19)):
            chosen.insert(draw(st.integers(0, len(chosen))), action)
    for action in chosen:
        flag = draw(st.sampled_from(action.option_strings))
        if action.nargs == 0:                          # store_true flags take no value
            argv.append(flag)
            continue
        value = draw(value_strategy(world, action.dest, action, loose))
        # `--flag=-5` is how a user passes a value that starts with a dash; `--flag -5` is argparse's refusal
        if draw(st.integers(0, 4)) if value.startswith("-") else draw(st.booleans()):
            argv.append(f"{flag}={value}")
        else:
            argv += [flag, value]
    if loose and draw(st.booleans()):                  # random extra tokens anywhere
        every_flag = sorted({f for p in SUBPARSERS.values() for a in p._actions for f in a.option_strings})
        for _ in range(draw(st.integers(1, 3))):
            token = draw(st.one_of(st.sampled_from(every_flag), st.sampled_from(HOSTILE_TEXT), _text(),
                                   st.sampled_from(world.hostile_paths())))
            argv.insert(draw(st.integers(1, len(argv))), token)
    return argv


# ---------------------------------------------------------------------------------------------- running

def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    out = {}
    for path in root.rglob("*"):
        try:
            if path.is_file():
                info = path.stat()
                out[str(path.relative_to(root))] = (info.st_size, info.st_mtime_ns)
        except OSError:
            pass
    return out


class Outcome:
    def __init__(self, argv, code, stdout, stderr, reached, error) -> None:
        self.argv, self.code, self.stdout, self.stderr, self.reached, self.error = argv, code, stdout, stderr, reached, error

    def describe(self) -> str:
        return (f"argv={self.argv!r}\nexit={self.code} reached_load={self.reached}\n--- stdout\n{self.stdout[-2000:]}"
                f"\n--- stderr\n{self.stderr[-4000:]}\n--- uncaught\n{self.error or ''}")


TALLY: Counter = Counter()


def run_cli(world: World, argv: list[str]) -> Outcome:
    """planner.cli.main(argv) in the world, with streams like a terminal's (stdout strict UTF-8, stderr
    backslashreplace, as Python sets them up), warnings shown the way a plain `python` run shows them."""
    out_bytes, err_bytes = io.BytesIO(), io.BytesIO()
    out = io.TextIOWrapper(out_bytes, encoding="utf-8", errors="strict", newline="\n", write_through=True)
    err = io.TextIOWrapper(err_bytes, encoding="utf-8", errors="backslashreplace", newline="\n", write_through=True)
    code, reached, error = None, False, None
    threads = torch.get_num_threads()
    cwd = os.getcwd()
    env = {k: os.environ.get(k) for k in ("PLANNER_CACHE", "PLANNER_STORAGE")}
    os.environ["PLANNER_CACHE"] = str(world.cache)
    os.environ.pop("PLANNER_STORAGE", None)
    os.chdir(world.root)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), \
                warnings.catch_warnings(record=True) as caught:
            warnings.resetwarnings()   # Python's own defaults, not pytest's
            for category in (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning):
                warnings.simplefilter("ignore", category)
            try:
                code = planner.cli.main(argv)
            except SystemExit as exc:            # argparse: --help/--version (0) or a usage error (2)
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            except ReachedModelLoad:
                reached = True
            except BaseException:  # noqa: BLE001 - the very thing the fuzz looks for
                error = traceback.format_exc()
            for w in caught:                      # as `python` would print them, on stderr
                err.write(warnings.formatwarning(w.message, w.category, w.filename, w.lineno))
    finally:
        os.chdir(cwd)
        torch.set_num_threads(threads)           # `--threads` sets the process's count; keep ours
        for key, value in env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    out.flush()
    err.flush()
    TALLY["vectors"] += 1
    stderr = err_bytes.getvalue().decode("utf-8", "replace")
    kind = ("reached model load" if reached else "uncaught exception" if error is not None else
            "exit 2 (argparse)" if code == 2 and "(see --help)" in stderr else f"exit {code}")
    TALLY[kind] += 1
    return Outcome(argv, code, out_bytes.getvalue().decode("utf-8", "replace"), stderr, reached, error)


def check(outcome: Outcome, before: dict, after: dict) -> None:
    why = outcome.describe()
    assert outcome.error is None, "uncaught exception:\n" + why
    assert "Traceback" not in outcome.stderr and "Traceback" not in outcome.stdout, "traceback printed:\n" + why
    bad = sorted({c for c in outcome.stderr + outcome.stdout if c in CONTROL}, key=ord)
    assert not bad, f"control characters {bad!r} reached the terminal:\n" + why
    if not outcome.reached:
        assert outcome.code in EXIT_CODES, "exit code outside {0, 1, 2, 130}:\n" + why
    lines = outcome.stderr.strip().splitlines()
    if outcome.code == 2:
        assert lines, "exit 2 without saying why:\n" + why
        command = outcome.argv[0]
        if command == "validate" and all(line.startswith("planner: error: ") for line in lines):
            assert len(lines) <= len(outcome.argv) - 1, "validate: more error lines than plans:\n" + why
        else:
            assert len(lines) == 1, "exit 2 with more than one line:\n" + why
            assert lines[0].startswith(("planner: error: ", f"planner {command}: error: ")), \
                "exit 2 without a `planner: error:` line:\n" + why
    # Never half-work: no temporary file left, and nothing written or changed (outside the storage folder
    # and the cache, where opening a study creates its database) by a run that never got to its work.
    leftovers = [p for p in after if p.endswith(".tmp")]
    assert not leftovers, f"half-written files {leftovers}:\n" + why
    touched = [p for p in after if after[p] != before.get(p) and not p.startswith(("storage/", "cache/"))]
    assert not touched, f"files written or changed {touched}:\n" + why


@pytest.fixture(autouse=True)
def _no_model_loads(monkeypatch):
    import planner.search.optimize

    monkeypatch.setattr(planner.models, "load_pipeline", _refuse_load)
    monkeypatch.setattr(planner.search.optimize, "load_pipeline", _refuse_load)   # imported at module level


@pytest.mark.parametrize("command", COMMANDS)
@settings(max_examples=EXAMPLES_PER_COMMAND, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                 HealthCheck.data_too_large, HealthCheck.filter_too_much])
@given(data=st.data())
def test_every_argv_ends_in_one_line_or_reaches_the_work(command, data, world):
    argv = data.draw(argv_for(world, command), label="argv")
    before = _snapshot(world.root)
    outcome = run_cli(world, argv)
    check(outcome, before, _snapshot(world.root))


# What the fuzz found (and CPython's argparse quirks), kept as fixed vectors: each must be refused with one
# line, exit 2, before any model loads. `{plan}` is a valid shipped plan, `{folder}` an existing folder.
FOUND = [
    ["validate", "a\nb"],                                            # an unescaped newline: two lines
    ["validate", "\x1b[31mred"],                                     # a raw escape code on the terminal
    ["gate", "{plan}", "\n"],                                        # argparse's "unrecognized arguments"
    ["gate", "{plan}", "\x1b[2J"],
    ["generate", "digits-unet", "--n=--"],                           # Python 3.11 argparse: args.n == []
    ["plan-from-study", "--study-name", STUDY, "--storage", "journal:"],          # FileNotFoundError
    ["plan-from-study", "--study-name", STUDY, "--storage", "journal:{folder}"],  # IsADirectoryError
    ["generate", "x" * 5000],                                        # ENAMETOOLONG from Path.exists()
    ["generate", "digits-unet", "--out", "x" * 5000 + ".png"],       # ... from Path.is_dir()
    ["generate", "~nobody-here/x"],                                  # Path.expanduser(): RuntimeError
    ["gate", "{plan}", "--threads", str(2**31)],                     # torch.set_num_threads overflows
    ["optimize", "digits-unet", "--budget", "fid+2", "--threads", str(2**31)],
    ["plan-from-study", "--study-name", STUDY, "--threads", str(2**31)],
    # refused only after the model loaded (the fuzz cannot see past the load): torch.Generator overflows,
    # diffusers refuses more steps than the scheduler was trained on, a plan cannot record a negative seed
    ["generate", "digits-unet", "--seed", str(2**64)],
    ["run", "{plan}", "--seed", str(2**64)],
    ["profile", "digits-unet", "--seed", "-1"],
    ["evaluate", "digits-unet", "--candidate-steps", "4", "--budget", "fid+2", "--seed", str(2**64)],
    ["evaluate", "digits-unet", "--candidate-steps", "5000", "--budget", "fid+2"],
    ["gate", "{plan}", "--seed", str(-2**70)],
    ["optimize", "digits-unet", "--budget", "fid+2", "--seed", "-5"],
    ["optimize", "digits-unet", "--budget", "fid+2", "--baseline-steps", "5000"],
]


@pytest.mark.parametrize("argv", FOUND, ids=lambda argv: " ".join(a[:20] for a in argv)[:60])
def test_vectors_the_fuzz_found_are_refused_in_one_line(argv, world):
    argv = [a.format(plan=PLAN_UNET, folder=world.folder) if a.startswith("{") or "{folder}" in a else a for a in argv]
    before = _snapshot(world.root)
    outcome = run_cli(world, argv)
    check(outcome, before, _snapshot(world.root))
    assert not outcome.reached and outcome.code == 2, "not refused before the model load:\n" + outcome.describe()


def test_vectors_that_must_reach_the_work(world):
    """The fuzz's positive control: valid inputs get past every check to the model load."""
    for argv in (["generate", "digits-unet", "--n", "4", "--out", "g.png"],
                 ["profile", "digits-dit", "--steps", "5", "--out", "p.json"],
                 ["optimize", "digits-unet", "--budget", "fid+2", "--out", "x.plan.yaml", "--trials", "3"],
                 ["evaluate", "digits-unet", "--candidate-steps", "5", "--budget", "fid+2,acc-1"],
                 ["run", str(PLAN_UNET), "--n", "4", "--out", "r.png"],
                 ["gate", str(PLAN_UNET), "--samples", "16", "--junit", "gate.xml"],
                 ["show", str(PLAN_UNET), "--pipeline"],
                 ["plan-from-study", "--study-name", STUDY, "--out", "s.plan.yaml"]):
        before = _snapshot(world.root)
        outcome = run_cli(world, argv)
        check(outcome, before, _snapshot(world.root))
        assert outcome.reached, "a valid command did not reach the model load:\n" + outcome.describe()
    outcome = run_cli(world, ["validate", str(PLAN_UNET), str(PLAN_DIT)])
    assert outcome.code == 0 and outcome.stdout.count("valid plan") == 2, outcome.describe()


def test_zz_tally(capsys):
    """Not a check: prints how the vectors of this run ended (visible with -s or -rP)."""
    with capsys.disabled():
        print("\ncli fuzz:", dict(TALLY), file=sys.stderr)
