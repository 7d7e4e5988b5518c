"""Named hooks: the one way techniques attach to a pipeline, listed by name and removable in any order.

Four places a technique can act, each with a registry of named hooks on the object itself:

* `add_call_hook(obj, name, fn)`: around every call of an object, i.e. a module's `__call__` or the
  pipeline's own `__call__`. `fn(call, *args, **kwargs)`, where `call(*args, **kwargs)` runs the rest of
  the chain and finally the object's own `__call__`. The object's class is swapped once for a subclass
  (same name, same signature) whose `__call__` runs the chain; the last removal puts the class back.
  For a module this runs *outside* any code `module.compile()` compiled in place (that lives inside
  `nn.Module.__call__`), which is where cache decisions belong: they must not be traced into a graph.
* `add_method_hook(obj, method, name, fn)`: around one method of one object (a scheduler's
  `set_timesteps` and `step`). The instance attribute becomes a dispatcher with the method's signature
  (pipelines inspect `set_timesteps` for `timesteps`/`sigmas`); the last removal restores what was there.
* `replace_attribute(obj, attribute, value, name)`: an attribute swapped for the duration (the sampler's
  scheduler, an exported denoiser standing in for the original).
* `add_forward_hook(module, name, hook)`: diffusers' own `HookRegistry` with a `ModelHook`, for hooks
  that change what a module computes and so belong *inside* compiled code (precision casts, token
  reduction, observing a norm's output). The registry is removed again with the last of our hooks.

In a chain the hook added last runs outermost. `attached(pipe)` lists every named hook on a pipeline,
its scheduler and every module of its components. Hook names start with "planner." so they read apart
from diffusers' own (`enable_cache` and friends use the same registry).
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import torch
from diffusers.hooks import ModelHook

CALL_HOOKS = "_planner_call_hooks"       # obj.__dict__: {name: fn}, in order of addition
CALL_CLASS = "_planner_call_class"       # obj.__dict__: (hooked subclass, original class)
METHOD_HOOKS = "_planner_method_hooks"   # obj.__dict__: {method: {"hooks": {name: fn}, "previous": ...}}
FORWARD_STATE = "_planner_forward_state"  # module.__dict__: what was there before our first forward hook
REPLACED = "_planner_replaced"           # obj.__dict__: {attribute: (name, our value, what was there)}
_MISSING = object()
_HOOKED_CLASSES: dict[type, type] = {}


# ------------------------------------------------------------------------------------------ call hooks

def _run_chain(hooks: list[Callable], base: Callable, args: tuple, kwargs: dict):
    def run(i: int, *a, **k):
        if i < 0:
            return base(*a, **k)
        return hooks[i](functools.partial(run, i - 1), *a, **k)
    return run(len(hooks) - 1, *args, **kwargs)


def _hooked_class(base: type) -> type:
    """One subclass per class: its `__call__` runs the object's chain, then the class's own `__call__`."""
    if base not in _HOOKED_CLASSES:
        base_call = base.__call__

        @functools.wraps(base_call)
        def __call__(self, *args, **kwargs):
            hooks = list(self.__dict__.get(CALL_HOOKS, {}).values())
            return _run_chain(hooks, functools.partial(base_call, self), args, kwargs)

        _HOOKED_CLASSES[base] = type(base.__name__, (base,), {
            "__call__": __call__, "__module__": base.__module__, "__qualname__": base.__qualname__,
            "_planner_hooked_base": base})
    return _HOOKED_CLASSES[base]


def add_call_hook(obj: Any, name: str, fn: Callable) -> Callable[[], None]:
    """Run `fn(call, *args, **kwargs)` around every call of `obj`; returns the undo (idempotent)."""
    hooks = obj.__dict__.setdefault(CALL_HOOKS, {})
    if name in hooks:
        raise ValueError(f"a call hook named {name!r} is already attached to {type(obj).__name__}")
    if CALL_CLASS not in obj.__dict__:
        original = type(obj)
        hooked = _hooked_class(original)
        object.__setattr__(obj, "__class__", hooked)
        obj.__dict__[CALL_CLASS] = (hooked, original)
    hooks[name] = fn
    return functools.partial(remove_call_hook, obj, name)


def remove_call_hook(obj: Any, name: str) -> None:
    hooks = obj.__dict__.get(CALL_HOOKS, {})
    hooks.pop(name, None)
    if hooks or CALL_CLASS not in obj.__dict__:
        return
    hooked, original = obj.__dict__[CALL_CLASS]
    if type(obj) is hooked:  # someone else's subclass on top of ours keeps ours as a pass-through
        object.__setattr__(obj, "__class__", original)
        del obj.__dict__[CALL_CLASS]
        del obj.__dict__[CALL_HOOKS]


def call_hook_names(obj: Any) -> list[str]:
    return list(getattr(obj, "__dict__", {}).get(CALL_HOOKS, {}))


# ---------------------------------------------------------------------------------------- method hooks

def add_method_hook(obj: Any, method: str, name: str, fn: Callable) -> Callable[[], None]:
    """Run `fn(call, *args, **kwargs)` around `obj.method(...)`; returns the undo (idempotent)."""
    table = obj.__dict__.setdefault(METHOD_HOOKS, {})
    if method not in table:
        previous = obj.__dict__.get(method, _MISSING)
        target = getattr(obj, method)
        entry = {"hooks": {}, "previous": previous}

        @functools.wraps(target)
        def dispatch(*args, **kwargs):
            return _run_chain(list(entry["hooks"].values()), target, args, kwargs)

        entry["dispatch"] = dispatch
        table[method] = entry
        obj.__dict__[method] = dispatch
    hooks = table[method]["hooks"]
    if name in hooks:
        raise ValueError(f"a hook named {name!r} is already attached to {type(obj).__name__}.{method}")
    hooks[name] = fn
    return functools.partial(remove_method_hook, obj, method, name)


def remove_method_hook(obj: Any, method: str, name: str) -> None:
    table = obj.__dict__.get(METHOD_HOOKS, {})
    entry = table.get(method)
    if entry is None:
        return
    entry["hooks"].pop(name, None)
    if entry["hooks"] or obj.__dict__.get(method) is not entry["dispatch"]:
        return  # hooks left, or someone replaced the dispatcher since: it stays a pass-through
    if entry["previous"] is _MISSING:
        del obj.__dict__[method]
    else:
        obj.__dict__[method] = entry["previous"]
    del table[method]
    if not table:
        del obj.__dict__[METHOD_HOOKS]


def method_hook_names(obj: Any) -> dict[str, list[str]]:
    table = getattr(obj, "__dict__", {}).get(METHOD_HOOKS, {})
    return {method: list(entry["hooks"]) for method, entry in table.items() if entry["hooks"]}


# --------------------------------------------------------------------------------------- forward hooks

def add_forward_hook(module: torch.nn.Module, name: str, hook) -> Callable[[], None]:
    """Register a diffusers `ModelHook` under `name` in the module's `HookRegistry`; returns the undo."""
    from diffusers.hooks import HookRegistry

    if FORWARD_STATE not in module.__dict__:
        module.__dict__[FORWARD_STATE] = {"forward": module.__dict__.get("forward", _MISSING),
                                          "registry": module.__dict__.get("_diffusers_hook", _MISSING),
                                          "names": set()}
    HookRegistry.check_if_exists_or_initialize(module).register_hook(hook, name)
    module.__dict__[FORWARD_STATE]["names"].add(name)
    return functools.partial(remove_forward_hook, module, name)


def remove_forward_hook(module: torch.nn.Module, name: str) -> None:
    state = module.__dict__.get(FORWARD_STATE)
    if state is None or name not in state["names"]:
        return
    registry = module.__dict__["_diffusers_hook"]
    registry.remove_hook(name, recurse=False)
    state["names"].discard(name)
    if state["names"]:
        return
    del module.__dict__[FORWARD_STATE]
    if registry.hooks:
        return  # diffusers' own hooks remain: their registry stays as it is
    # Leave the module exactly as before: no registry we created, no instance `forward` we caused.
    if state["registry"] is _MISSING:
        del module.__dict__["_diffusers_hook"]
    if state["forward"] is _MISSING:
        module.__dict__.pop("forward", None)
    else:
        module.__dict__["forward"] = state["forward"]


class Observer(ModelHook):
    """A forward hook that only looks: `pre(args, kwargs)` and `post(output)` change nothing."""

    def __init__(self, pre: Callable | None = None, post: Callable | None = None) -> None:
        super().__init__()
        self.pre, self.post = pre, post

    def pre_forward(self, module, *args, **kwargs):
        if self.pre is not None:
            self.pre(args, kwargs)
        return args, kwargs

    def post_forward(self, module, output):
        if self.post is not None:
            self.post(output)
        return output


class Rewrite(ModelHook):
    """A forward hook that computes the module's output itself: `fn(forward, *args, **kwargs)`, where
    `forward` is the module's forward as it was (token merging around attention, casts around a layer)."""

    def __init__(self, fn: Callable) -> None:
        super().__init__()
        self.fn = fn

    def new_forward(self, module, *args, **kwargs):
        return self.fn(self.fn_ref.original_forward, *args, **kwargs)


def forward_hook_names(module: torch.nn.Module) -> list[str]:
    registry = module.__dict__.get("_diffusers_hook")
    return list(getattr(registry, "_hook_order", ())) if registry is not None else []


# ------------------------------------------------------------------------------------ replaced attributes

def replace_attribute(obj: Any, attribute: str, value: Any, name: str) -> Callable[[], None]:
    """Put `value` at `obj.attribute` (a pipeline's scheduler, a swapped-in component) under `name`;
    the undo restores what was there, unless something else replaced it since (then it stays)."""
    table = obj.__dict__.setdefault(REPLACED, {})
    if attribute in table:
        raise ValueError(f"{type(obj).__name__}.{attribute} is already replaced by {table[attribute][0]!r}")
    table[attribute] = (name, value, obj.__dict__.get(attribute, _MISSING))
    obj.__dict__[attribute] = value   # not setattr: DiffusionPipeline.__setattr__ would rewrite its config
    return functools.partial(restore_attribute, obj, attribute)


def restore_attribute(obj: Any, attribute: str) -> None:
    table = obj.__dict__.get(REPLACED, {})
    if attribute not in table:
        return
    _, value, previous = table.pop(attribute)
    if not table:
        del obj.__dict__[REPLACED]
    if obj.__dict__.get(attribute) is not value:
        return
    if previous is _MISSING:
        del obj.__dict__[attribute]
    else:
        obj.__dict__[attribute] = previous


def replaced_attributes(obj: Any) -> dict[str, str]:
    return {attr: entry[0] for attr, entry in getattr(obj, "__dict__", {}).get(REPLACED, {}).items()}


# --------------------------------------------------------------------------------------------- listing

def attached(pipe) -> list[tuple[str, str]]:
    """Every named hook on `pipe`: [(where, name)], e.g. ("pipeline", "planner.sampler"),
    ("scheduler.step", "planner.steps"), ("unet.mid_block", "planner.deepcache")."""
    out = [("pipeline", n) for n in call_hook_names(pipe)]
    out += [(f"pipeline.{attr}", n) for attr, n in replaced_attributes(pipe).items()]
    scheduler = getattr(pipe, "scheduler", None)
    if scheduler is not None:
        out += [(f"scheduler.{m}", n) for m, names in method_hook_names(scheduler).items() for n in names]
    seen: set[int] = set()
    for attr, value in sorted(vars(pipe).items()):
        if not isinstance(value, torch.nn.Module) or id(value) in seen:
            continue
        seen.add(id(value))
        for sub, module in value.named_modules():
            where = f"{attr}.{sub}" if sub else attr
            out += [(where, n) for n in call_hook_names(module)]
            out += [(where, n) for n in forward_hook_names(module)]
    return out


def is_hooked(module: torch.nn.Module) -> bool:
    """Does anything intercept or rewrite this module's calls (our hooks, diffusers' hooks, a patched
    `forward`, PyTorch forward hooks)? Exporters refuse such modules: the graph would freeze them."""
    return bool(call_hook_names(module) or forward_hook_names(module) or "forward" in module.__dict__
                or module._forward_hooks or module._forward_pre_hooks)
