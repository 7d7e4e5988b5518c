"""The shape every technique shares, after diffusers' hooks and torchao's `quantize_`:

* a config: a frozen pydantic model (`extra="forbid"`), serialised as `{type, version, params}`;
* a handler registered for that config type: `handler(pipe, config) -> Handle`;
* a `Handle` whose `remove()` restores the pipeline exactly. Handlers attach only named hooks
  (`ground.hooks`: "planner.<type>"), so what a technique attached can be listed and removed in any order.

Configs are resolved from dicts only through the registry (an allow-list): an unknown `type` is an
error, never an import. Several techniques compose in a fixed order of `stage`.
"""
from __future__ import annotations

from typing import Any, Callable, ClassVar

from pydantic import ValidationError

from ground.errors import PlannerError, printable
from ground.schema import StrictModel

# Application order: the sampler fixes the step grid that cache schedules index; quantisation and token
# merging change the modules that caches wrap; compilation comes last so cache decisions stay outside it.
STAGE_SAMPLER, STAGE_PRECISION, STAGE_TOKENS, STAGE_CACHE, STAGE_COMPILE = 0, 10, 20, 30, 40


class ConfigError(PlannerError):
    """A technique config that fails validation; the message names the field."""


class NotApplicable(PlannerError):
    """A technique that cannot act on this pipeline (a UNet-only method on a transformer, say)."""


class TechniqueConfig(StrictModel):
    """Frozen, unknown fields forbidden, no look-alike values (`true` is not a step count), finite numbers."""

    type: ClassVar[str] = ""
    version: ClassVar[int] = 1
    stage: ClassVar[int] = STAGE_CACHE

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "version": self.version, "params": self.model_dump(mode="json")}

    def apply(self, pipe) -> "Handle":
        """`backends.apply(pipe, self)`: lets code that must not import backends (the profiler) apply a config."""
        return apply(pipe, self)

    def label(self) -> str:
        params = ", ".join(f"{k}={v}" for k, v in self.model_dump().items() if not isinstance(v, (list, dict)))
        return f"{self.type}({params})"


class Handle:
    """Undo record of one applied technique. `remove()` is idempotent.

    `suspend()` puts the pipeline back as it was without forgetting the technique, `resume()` puts the
    technique back: the search times the baseline and the candidate on one pipeline this way. A handler
    that can swap its state cheaply passes `suspend`/`resume` (quantisation swaps weights, compilation
    its compiled code); otherwise suspending removes the technique and resuming applies it afresh.
    """

    def __init__(self, config: TechniqueConfig, undo: Callable[[], None], info: dict | None = None, *,
                 suspend: Callable[[], None] | None = None, resume: Callable[[], None] | None = None) -> None:
        self.config = config
        self.info = info or {}
        self._undo = undo
        self._suspend, self._resume = suspend, resume
        self.pipe = None           # set by `apply`
        self.removed = False
        self.suspended = False

    def remove(self) -> None:
        if self.removed:
            return
        if self.suspended and self._suspend is None:
            self.removed = True    # already undone by suspend()
            return
        if self.suspended:
            self._resume()         # a swapped-out state is restored the normal way
        self._undo()
        self.removed = True

    def suspend(self) -> None:
        if self.removed or self.suspended:
            return
        (self._suspend or self._undo)()
        self.suspended = True

    def resume(self) -> None:
        if self.removed or not self.suspended:
            return
        if self._resume is not None:
            self._resume()
        else:
            fresh = apply(self.pipe, self.config)
            self._undo, self._suspend, self._resume = fresh._undo, fresh._suspend, fresh._resume
            self.info.clear()
            self.info.update(fresh.info)
        self.suspended = False


class CompositeHandle(Handle):
    """Several handles: removed and suspended in reverse order of application, resumed in order."""

    def __init__(self, handles: list[Handle]) -> None:
        self.handles = handles
        super().__init__(config=None, undo=self._remove_all, suspend=self._suspend_all,  # type: ignore[arg-type]
                         resume=self._resume_all)

    def _remove_all(self) -> None:
        for handle in reversed(self.handles):
            handle.remove()

    def _suspend_all(self) -> None:
        for handle in reversed(self.handles):
            handle.suspend()

    def _resume_all(self) -> None:
        for handle in self.handles:
            handle.resume()


_REGISTRY: dict[str, tuple[type[TechniqueConfig], Callable[[Any, TechniqueConfig], Handle]]] = {}
_CHECKS: dict[str, Callable[[Any], str | None]] = {}


def register(config_cls: type[TechniqueConfig], applicable: Callable[[Any], str | None] | None = None):
    """Decorator: register `handler(pipe, config) -> Handle` for `config_cls`.

    `applicable(pipe)` returns None when the technique can act on `pipe`, else the reason it cannot.
    """
    def decorate(handler):
        if config_cls.type in _REGISTRY and _REGISTRY[config_cls.type][0] is not config_cls:
            raise RuntimeError(f"technique type {config_cls.type!r} registered twice")
        _REGISTRY[config_cls.type] = (config_cls, handler)
        if applicable is not None:
            _CHECKS[config_cls.type] = applicable
        return handler
    return decorate


def _load_all() -> None:
    # Importing the technique modules registers them; kept lazy so `import backends` stays cheap. A module
    # that fails to import is an error, never a technique that silently disappears.
    import backends.caching  # noqa: F401
    import backends.compile  # noqa: F401
    import backends.quantization  # noqa: F401
    import backends.sampler  # noqa: F401
    import backends.tokens  # noqa: F401


def registered_types() -> list[str]:
    _load_all()
    return sorted(_REGISTRY)


def config_class(type_name: str) -> type[TechniqueConfig]:
    _load_all()
    if type_name not in _REGISTRY:
        raise ConfigError(f"type: unknown technique {type_name!r}; known: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[type_name][0]


def _field_path(error: dict) -> str:
    return ".".join(printable(p, 80) for p in error.get("loc", ())) or "params"


def config_from_dict(data: Any, where: str = "technique") -> TechniqueConfig:
    """Resolve `{type, version, params}` through the allow-list; errors name the offending field."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: must be a mapping with type, version and params")
    unknown = set(data) - {"type", "version", "params"}
    if unknown:
        raise ConfigError(f"{where}.{printable(sorted(map(str, unknown))[0], 80)}: unknown field "
                          "(allowed: type, version, params)")
    type_name = data.get("type")
    if not isinstance(type_name, str):
        raise ConfigError(f"{where}.type: must be a string naming a technique")
    try:
        cls = config_class(type_name)
    except ConfigError as exc:
        raise ConfigError(f"{where}.{exc}") from None
    version = data.get("version", cls.version)
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= cls.version:
        raise ConfigError(f"{where}.version: {type_name} supports versions 1..{cls.version}, got {version!r}")
    params = data.get("params", {})
    if not isinstance(params, dict):
        raise ConfigError(f"{where}.params: must be a mapping")
    try:
        return cls(**params)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ConfigError(f"{where}.params.{_field_path(first)}: {first['msg']}") from None
    except TypeError as exc:
        raise ConfigError(f"{where}.params: {exc}") from None


def why_not_applicable(pipe, config_or_cls) -> str | None:
    """None when the technique can act on `pipe`, else a one-line reason."""
    _load_all()
    type_name = config_or_cls.type
    check = _CHECKS.get(type_name)
    return check(pipe) if check else None


def apply(pipe, config: TechniqueConfig) -> Handle:
    _load_all()
    if config.type not in _REGISTRY:
        raise ConfigError(f"type: unknown technique {config.type!r}")
    reason = why_not_applicable(pipe, config)
    if reason:
        raise NotApplicable(f"{config.type} cannot apply to {type(pipe).__name__}: {reason}")
    handle = _REGISTRY[config.type][1](pipe, config)
    handle.pipe = pipe
    return handle


def apply_all(pipe, configs: list[TechniqueConfig]) -> CompositeHandle:
    """Apply in stage order (stable for equal stages); on failure, undo what was applied and re-raise."""
    handles: list[Handle] = []
    try:
        for config in sorted(configs, key=lambda c: c.stage):
            handles.append(apply(pipe, config))
    except BaseException:
        for handle in reversed(handles):
            handle.remove()
        raise
    return CompositeHandle(handles)
