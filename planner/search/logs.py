"""A quiet, useful log: third-party warnings and progress bars are the libraries' business.

Inside `quiet_third_party`, diffusers' and transformers' loggers speak only on errors, their progress
bars are off, and Python warnings from other packages are collected and each distinct one is shown once
at the end (all of them as they come with `--verbose`). The planner's own lines are unaffected.
"""
from __future__ import annotations

import contextlib
import logging
import warnings

OURS = ("ground", "backends", "search_spaces", "profiler", "planner")


@contextlib.contextmanager
def quiet_third_party(verbose: bool = False, log=print):
    if verbose:
        yield
        return
    loggers = [logging.getLogger(name) for name in ("diffusers", "transformers", "torch._dynamo", "torch._inductor",
                                                    "torch.onnx")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    seen: dict[str, int] = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels):
                lg.setLevel(level)
            for w in caught:
                if w.filename and any(f"/{pkg}/" in w.filename for pkg in OURS) and issubclass(w.category, UserWarning):
                    key = f"{w.category.__name__}: {w.message}"
                else:
                    key = f"{w.category.__name__} ({w.filename.rsplit('/', 1)[-1]}): {w.message}"
                seen[key] = seen.get(key, 0) + 1
            for key, count in seen.items():
                log(f"[planner] warning{' (x%d)' % count if count > 1 else ''}: {str(key).splitlines()[0][:300]}")
