"""The `--budget` language: comma-joined clauses, all of which must hold.

    relative to the baseline (same conditions and seeds):
        fid+2       candidate FID at most 2 above the baseline's
        fid*1.1     candidate FID at most 1.1 times the baseline's
        kid+0.001   candidate KID at most 0.001 above the baseline's
        acc-1       at most 1 point (percentage point) of label accuracy lost
        clip-0.5    at most 0.5 CLIP-score points lost
    absolute, paired against the baseline's own images:
        psnr>=30    ssim>=0.9    lpips<=0.1
    absolute, distribution-level:
        fid<=20     kid<=0.01    acc>=95    clip>=25

Whitespace around clauses is allowed. Parse errors are one line naming the 0-based position of the
offending character. `str(Budget)` is the canonical form and parses back to an equal Budget.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

from ground.errors import PlannerError

# metric -> operators it accepts
ALLOWED = {
    "fid": ("+", "*", "<="),
    "kid": ("+", "*", "<="),
    "acc": ("-", ">="),
    "clip": ("-", ">="),
    "psnr": (">=",),
    "ssim": (">=",),
    "lpips": ("<=",),
}
PAIRED = ("psnr", "ssim", "lpips")  # computed image-by-image against the baseline
_LOWER_IS_BETTER_OPS = ("+", "*", "<=")  # the measured quantity must stay *below* the threshold
_NUMBER = re.compile(r"(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_METRIC = re.compile(r"[A-Za-z]+")


@dataclass(frozen=True)
class Clause:
    metric: str
    op: str
    threshold: float

    @property
    def relative(self) -> bool:
        return self.op in ("+", "*", "-")

    @property
    def paired(self) -> bool:
        return self.metric in PAIRED

    @property
    def upper_bound(self) -> bool:
        """True when the measured quantity must stay at or below the bound (so a CI's high end is the
        unfavourable one)."""
        return self.op in _LOWER_IS_BETTER_OPS

    @property
    def bound(self) -> float:
        """The bound on the measured quantity (see `measured_name`)."""
        return -self.threshold if self.op == "-" else self.threshold

    @property
    def measured_name(self) -> str:
        if self.op in ("+", "-"):
            return f"{self.metric}(candidate) - {self.metric}(baseline)"
        if self.op == "*":
            return f"{self.metric}(candidate) / {self.metric}(baseline)"
        return self.metric

    def holds(self, measured: float) -> bool:
        if math.isnan(measured):
            return False
        return measured <= self.bound if self.upper_bound else measured >= self.bound

    def unfavourable(self, ci_low: float, ci_high: float) -> float:
        return ci_high if self.upper_bound else ci_low

    def __str__(self) -> str:
        return f"{self.metric}{self.op}{_num(self.threshold)}"


def _num(x: float) -> str:
    s = repr(float(x))
    return s[:-2] if s.endswith(".0") else s


@dataclass(frozen=True)
class Budget:
    clauses: tuple[Clause, ...]

    def __str__(self) -> str:
        return ",".join(str(c) for c in self.clauses)

    def __iter__(self):
        return iter(self.clauses)

    def __len__(self) -> int:
        return len(self.clauses)

    @property
    def metrics(self) -> set[str]:
        return {c.metric for c in self.clauses}

    def to_json(self) -> str:
        return str(self)

    @classmethod
    def from_string(cls, text: str) -> "Budget":
        return parse_budget(text)


def _error(text: str, pos: int, what: str) -> PlannerError:
    return PlannerError(f"budget {text!r}: {what} at position {pos}")


def parse_budget(text: str) -> Budget:
    """Parse a budget expression; raise PlannerError (one line, with the position) when malformed."""
    if not isinstance(text, str):
        raise PlannerError(f"budget must be a string, got {type(text).__name__}")
    pos, n, clauses = 0, len(text), []
    while True:
        while pos < n and text[pos].isspace():
            pos += 1
        m = _METRIC.match(text, pos)
        if not m:
            raise _error(text, pos, "expected a metric name (" + ", ".join(ALLOWED) + ")")
        metric = m.group(0).lower()
        if metric not in ALLOWED:
            raise _error(text, pos, f"unknown metric {m.group(0)!r}; known: " + ", ".join(ALLOWED))
        pos = m.end()
        op_pos = pos
        if text.startswith(">=", pos) or text.startswith("<=", pos):
            op = text[pos:pos + 2]
            pos += 2
        elif pos < n and text[pos] in "+*-":
            op = text[pos]
            pos += 1
        else:
            raise _error(text, pos, "expected an operator (+, *, -, >=, <=)")
        if op not in ALLOWED[metric]:
            raise _error(text, op_pos, f"operator {op!r} does not apply to {metric}; use "
                         + " or ".join(f"{metric}{o}N" for o in ALLOWED[metric]))
        m = _NUMBER.match(text, pos)
        if not m:
            raise _error(text, pos, "expected a number")
        threshold = float(m.group(0))
        if not math.isfinite(threshold):
            raise _error(text, pos, "expected a finite number")
        if op == "*" and threshold <= 0:
            raise _error(text, pos, "expected a factor above 0")
        pos = m.end()
        clauses.append(Clause(metric, op, threshold))
        while pos < n and text[pos].isspace():
            pos += 1
        if pos == n:
            break
        if text[pos] != ",":
            raise _error(text, pos, "expected ',' or the end")
        pos += 1
    return Budget(tuple(clauses))
