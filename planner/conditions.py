"""The conditions a search, a gate or a run generates on: the user's prompts file, or the built-in ones.

`--prompts FILE`:
* `.txt`: one prompt per line (blank lines and lines starting with `#` are skipped);
* `.jsonl`: one JSON object per line with `prompt` (text pipelines) or `class_label` (class-conditional
  ones), and optionally `negative_prompt`, `seed`, `height`, `width`.
At most `MAX_ROWS` rows, 2,000 characters a prompt, `MAX_BYTES` a file; each problem is one line that
names the line. The rows are split so the final verification runs on prompts the search never saw:
every fifth row (the 5th, 10th, ...) is a verification row when the file has at least 5 rows; with
fewer, both use every row (their seeds still differ).

A request of n samples cycles through its rows: sample i takes row i mod R; its seed is the row's own
`seed` (JSONL) plus (i div R) * 1,000,003 for later rounds, else `first_seed + i`.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ground.anatomy import anatomy_of
from ground.errors import PlannerError, printable
from ground.files import read_bounded
from ground.generation import Request, default_request
from planner.plan import MAX_ROWS, Conditions, Row

MAX_BYTES = 4 * 1024 * 1024
ROUND_STRIDE = 1_000_003
VERIFY_EVERY = 5
JSONL_FIELDS = set(Row.model_fields)


def _row_from_json(text: str, where: str) -> Row:
    from pydantic import ValidationError

    try:
        data = json.loads(text)
    except ValueError as exc:
        raise PlannerError(f"{where}: not valid JSON ({printable(exc, 80)})") from None
    if not isinstance(data, dict):
        raise PlannerError(f"{where}: each line must be a JSON object with a prompt or class_label")
    unknown = sorted(set(map(str, data)) - JSONL_FIELDS)
    if unknown:
        raise PlannerError(f"{where}: unknown field {printable(unknown[0], 40)!r} "
                           f"(allowed: {', '.join(sorted(JSONL_FIELDS))})")
    try:
        return Row.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first.get("loc", ())) or "row"
        raise PlannerError(f"{where}: {field}: {printable(first['msg'], 120)}") from None


def parse_prompts(text: str, source: str) -> list[Row]:
    rows: list[Row] = []
    jsonl = source.endswith(".jsonl")
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or (not jsonl and stripped.startswith("#")):
            continue
        where = f"{source}, line {number}"
        if jsonl:
            row = _row_from_json(stripped, where)
        else:
            if len(stripped) > 2000:
                raise PlannerError(f"{where}: a prompt has at most 2000 characters")
            row = Row(prompt=stripped)
        if row.prompt is None and row.class_label is None:
            raise PlannerError(f"{where}: give a prompt or a class_label")
        rows.append(row)
        if len(rows) > MAX_ROWS:
            raise PlannerError(f"{source}: more than {MAX_ROWS} rows; use a representative subset")
    if not rows:
        raise PlannerError(f"{source}: no prompts in the file")
    return rows


def load_prompts(path: str | Path) -> Conditions:
    """Read and split a prompts file (see the module doc); one-line errors naming the line."""
    path = Path(path)
    if path.suffix.lower() not in (".txt", ".jsonl"):
        raise PlannerError(f"--prompts {path}: use a .txt (one prompt per line) or .jsonl file")
    data = read_bounded(path, MAX_BYTES, "prompts file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise PlannerError(f"--prompts {path}: not a UTF-8 text file") from None
    rows = parse_prompts(text, str(path) if path.suffix.lower() != ".jsonl" else str(path))
    if len(rows) >= VERIFY_EVERY:
        verify = rows[VERIFY_EVERY - 1::VERIFY_EVERY]
        search = [r for i, r in enumerate(rows) if i % VERIFY_EVERY != VERIFY_EVERY - 1]
    else:
        search = verify = rows
    return Conditions(source=path.name, sha256=hashlib.sha256(data).hexdigest(), search=search, verify=verify)


def conditions_from_prompts(prompts: list[str], source: str = "prompts") -> Conditions:
    """The Python API's `prompts=[...]`: the same split as a file's."""
    text = "\n".join(str(p).replace("\n", " ") for p in prompts)
    rows = parse_prompts(text, source)
    split = len(rows) >= VERIFY_EVERY
    search = [r for i, r in enumerate(rows) if not split or i % VERIFY_EVERY != VERIFY_EVERY - 1]
    verify = rows[VERIFY_EVERY - 1::VERIFY_EVERY] if split else rows
    return Conditions(source=source, sha256=hashlib.sha256(text.encode()).hexdigest(), search=search, verify=verify)


def check_fits(conditions: Conditions, pipe) -> None:
    """Prompts for a text pipeline, class labels for a class-conditional one; refused before any work."""
    kind = anatomy_of(pipe).conditioning
    rows = conditions.search + conditions.verify
    if kind == "text" and any(r.prompt is None for r in rows):
        raise PlannerError(f"--prompts {conditions.source}: {type(pipe).__name__} takes text prompts; "
                           "every row needs a prompt")
    if kind == "class":
        if any(r.class_label is None for r in rows):
            raise PlannerError(f"--prompts {conditions.source}: {type(pipe).__name__} takes class labels; "
                               "use a .jsonl file with a class_label on every row")
        classes = anatomy_of(pipe).num_classes
        if classes is not None and any(r.class_label >= classes for r in rows):
            raise PlannerError(f"--prompts {conditions.source}: class labels must be below {classes}")
    if kind == "unconditional":
        raise PlannerError(f"--prompts: {type(pipe).__name__} is unconditional; it takes no prompts")


def make_request(pipe, n: int, first_seed: int, conditions: Conditions | None = None, phase: str = "search",
                 negative_prompt: str | None = None, size: tuple[int, int] | None = None) -> Request:
    """n (condition, seed) pairs of `phase`'s rows (see the module doc), with the defaults given."""
    if conditions is None:
        base = default_request(pipe, n, first_seed)
        negatives = None if negative_prompt is None else (negative_prompt,) * n
        sizes = None if size is None else (tuple(size),) * n
        return Request(base.conditions, base.seeds, negatives, sizes)
    rows = conditions.search if phase == "search" else conditions.verify
    text = anatomy_of(pipe).conditioning == "text"
    picked = [rows[i % len(rows)] for i in range(n)]
    seeds = tuple(r.seed + (i // len(rows)) * ROUND_STRIDE if r.seed is not None else first_seed + i
                  for i, r in enumerate(picked))
    conds = tuple(r.prompt if text else r.class_label for r in picked)
    negatives = tuple(r.negative_prompt if r.negative_prompt is not None else negative_prompt for r in picked)
    sizes = tuple((r.height or size[0], r.width or size[1]) if size else
                  ((r.height, r.width) if r.height and r.width else None) for r in picked)
    return Request(conds, seeds, negatives if any(x is not None for x in negatives) else None,
                   sizes if any(x is not None for x in sizes) else None)
