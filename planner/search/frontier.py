"""The step frontier: for each sampler, the fewest steps at which the budget still holds.

Quality is close to monotone in the number of steps, so the frontier is found by bisection over the
step choices, each probe one sequential quality decision of the sampler alone (no timing: cheap). A
sampler that does not hold at the fewest steps found so far cannot beat them and costs one probe; one
that does is bisected below them. The result is
what a careful user finds by hand with a one-knob sweep, and the joint search starts from it: every
sampler's frontier point is measured as a trial of its own (nothing else added), then with the
export backend where the device has one, before TPE proposes anything. A plan can therefore not lose
to a one-knob sweep of the steps. The frontier is stored in the study, so a resumed search and every
worker of a shared study reuse it. A worker joining a study while its creator still finds the frontier
waits for it (`wait_for_frontier`): starting on TPE's guesses meanwhile would spend the --trials cap on
points other than the frontier's.
"""
from __future__ import annotations

import json
import os
import socket
import time

from backends.sampler import SamplerConfig
from backends.technique import NotApplicable, apply_all
from search_spaces.sampler import sampler_choices, step_choices

ATTR = "step_frontier"
OWNER_ATTR = "step_frontier_by"   # host:pid of the worker finding the frontier
PROBES_ATTR = "step_frontier_probes"   # quality-only evaluations the frontier cost
WAIT_S = 1800                     # a joiner waits at most this long for another machine's frontier
PROBE_LIMIT = 48   # probes in all: bisection over <= 12 step choices for <= 7 samplers needs fewer


def _holds(ctx, config: SamplerConfig, fixed: list) -> bool:
    try:
        handle = apply_all(ctx.pipe, [config, *fixed])
    except NotApplicable:
        return False
    try:
        with ctx.trial(handle):
            decision, _ = ctx.decide("search")
    finally:
        handle.remove()
    return decision.holds


def stored_frontier(study) -> dict[str, int | None] | None:
    stored = study.user_attrs.get(ATTR)
    return None if stored is None else dict(json.loads(stored))


def publish_frontier(study, frontier: dict[str, int | None]) -> None:
    """Store the frontier, after its trials are queued: a joiner that sees it finds them queued."""
    study.set_user_attr(ATTR, json.dumps(frontier))


def _owner_alive(owner: str) -> bool:
    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname():
        return True   # another machine: trust it until WAIT_S
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return int(pid) != os.getpid()


def wait_for_frontier(study, log, wait_s: float = WAIT_S, poll_s: float = 0.5) -> dict[str, int | None] | None:
    """The stored frontier; while the worker finding it is alive, wait for it (None: find it yourself)."""
    owner = study.user_attrs.get(OWNER_ATTR)
    deadline = time.time() + wait_s
    said = False
    while (frontier := stored_frontier(study)) is None and owner and _owner_alive(owner) and time.time() < deadline:
        if not said:
            log(f"[planner] waiting for worker {owner} to find the step frontier")
            said = True
        time.sleep(poll_s)
        owner = study.user_attrs.get(OWNER_ATTR)
    return frontier


def step_frontier(ctx, study, log) -> dict[str, int | None]:
    """{sampler: fewest steps that hold the budget, or None when even the baseline's steps do not}.
    Not stored here: the caller queues the frontier's trials, then publishes it."""
    choices = step_choices(ctx.settings.baseline_steps)
    frontier: dict[str, int | None] = {}
    probes = 0
    best = len(choices) - 1          # index of the fewest steps any sampler holds at so far
    for name in sampler_choices(ctx.pipe):
        def holds(index: int) -> bool:
            nonlocal probes
            probes += 1
            return _holds(ctx, SamplerConfig(name=name, steps=choices[index], spacing="trailing"), [])

        # A sampler that does not hold at the best steps found so far cannot beat it: one probe says so.
        if probes >= PROBE_LIMIT or not holds(best):
            frontier[name] = None
            continue
        lo, hi = 0, best
        while lo < hi and probes < PROBE_LIMIT:
            mid = (lo + hi) // 2
            if holds(mid):
                hi = mid
            else:
                lo = mid + 1
        frontier[name], best = choices[hi], hi
    found = ", ".join(f"{n} {s}" for n, s in sorted(frontier.items(), key=lambda kv: kv[1] or 10**6) if s)
    log(f"[planner] step frontier ({probes} quality probes): {found or 'no sampler holds the budget'}")
    study.set_user_attr(PROBES_ATTR, probes)
    return frontier


def frontier_trials(frontier: dict[str, int | None], families: list[str], exporter: str | None,
                    baseline_steps: int, top: int = 3) -> list[dict]:
    """The first trials of the joint study: each of the `top` fastest frontier points alone, then each
    with the export backend (`exporter`) where the device has one: the fastest point may fail on the
    unseen seeds, and its siblings at the same steps should not then lose the exporter's gain. The
    baseline's own scheduler at its own steps, alone, is the baseline itself: not worth a trial."""
    points = sorted(((s, n) for n, s in frontier.items() if s is not None), key=lambda p: (p[0], p[1]))[:top]
    alone = {"compile.backend": "eager", "quant.mode": "none", "tokens.method": "none", "cache": "none"}
    params = {k: v for k, v in alone.items() if k.split(".")[0] in _family_params(families)}
    trials = [{"sampler": name, "steps": steps, **params} for steps, name in points
              if (name, steps) != ("keep", baseline_steps)]
    if exporter and "compile" in families:
        trials += [{"sampler": name, "steps": steps, "compile.backend": exporter} for steps, name in points]
    return trials


def _family_params(families: list[str]) -> set[str]:
    """Parameter name prefixes each family suggests."""
    prefixes = {"compile": "compile", "quant": "quant", "tokens": "tokens", "cache": "cache"}
    return {prefixes[f] for f in families if f in prefixes}
