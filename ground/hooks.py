"""Named hooks: the one way techniques attach to a pipeline, listed by name and removable in any order.

Five places a technique can act, each with a registry of named hooks on the object itself:

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
  scheduler, an exported denoiser standing in for the original, a module's compiled call). Replacements
  of one attribute nest and come off in any order.
* `add_forward_hook(module, name, hook)`: diffusers' own `HookRegistry` with a `ModelHook`, for hooks
  that change what a module computes and so belong *inside* compiled code (precision casts, token
  reduction, observing a norm's output, the profiler's timers). The registry is removed again with the
  last of our hooks. Only diffusers' public registry API is used (`check_if_exists_or_initialize`,
  `register_hook`, `remove_hook`, `hooks`); the registry is found on a module by its type.
* `StateSwap(module, name)`: a named in-place change of a module tree's own state (children, parameters,
  buffers: what quantisers do), undone by putting the very same objects back, hooks left alone.

In a chain the hook added last runs outermost. `attached(pipe)` lists every named hook on a pipeline,
its scheduler and every module of its components. Hook names start with "planner." so they read apart
from diffusers' own (`enable_cache` and friends use the same registry).
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import torch
from diffusers.hooks import HookRegistry, ModelHook

CALL_HOOKS = "_planner_call_hooks"       # obj.__dict__: {name: fn}, in order of addition
CALL_CLASS = "_planner_call_class"       # obj.__dict__: (hooked subclass, original class)
METHOD_HOOKS = "_planner_method_hooks"   # obj.__dict__: {method: {"hooks": {name: fn}, "previous": ...}}
FORWARD_STATE = "_planner_forward_state"  # module.__dict__: what was there before our first forward hook
REPLACED = "_planner_replaced"           # obj.__dict__: {attribute: [[name, our value, what was there], ...]}
SWAPS = "_planner_swaps"                 # module.__dict__: {name: StateSwap}
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
        # Why a class swap (while hooked, `type(obj) is Cls` is false: diffusers' `from_pipe` leaves such a
        # denoiser behind): Python looks `__call__` up on the type, so a pipeline has no per-object place
        # to wrap it; a module's only one, `_compiled_call_impl`, is what in-place compilation
        # (`module.compile()`, `compile_repeated_blocks`) overwrites, and cache decisions must stay outside
        # compiled code whichever comes first. Every other kind of hook here leaves the class alone.
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

def _registry(module: torch.nn.Module) -> HookRegistry | None:
    """The module's diffusers registry, if any, found by type (the attribute holding it is diffusers' own)."""
    return next((v for v in vars(module).values() if isinstance(v, HookRegistry)), None)


def add_forward_hook(module: torch.nn.Module, name: str, hook) -> Callable[[], None]:
    """Register a diffusers `ModelHook` under `name` in the module's `HookRegistry`; returns the undo."""
    state = module.__dict__.get(FORWARD_STATE)
    if state is None:
        keys, forward = set(module.__dict__), module.__dict__.get("forward", _MISSING)
        registry = HookRegistry.check_if_exists_or_initialize(module)
        state = module.__dict__[FORWARD_STATE] = {"forward": forward, "registry": registry, "names": set(),
                                                  "created": set(module.__dict__) - keys}
    state["registry"].register_hook(hook, name)
    state["names"].add(name)
    return functools.partial(remove_forward_hook, module, name)


def remove_forward_hook(module: torch.nn.Module, name: str) -> None:
    state = module.__dict__.get(FORWARD_STATE)
    if state is None or name not in state["names"]:
        return
    registry = state["registry"]
    registry.remove_hook(name, recurse=False)
    state["names"].discard(name)
    if state["names"]:
        return
    del module.__dict__[FORWARD_STATE]
    if registry.hooks:
        return  # diffusers' own hooks remain: their registry stays as it is
    # Leave the module exactly as before: no registry we created, no instance `forward` we caused.
    for key in state["created"]:
        module.__dict__.pop(key, None)
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
    registry = _registry(module)
    return list(registry.hooks) if registry is not None else []   # in order of registration


# ------------------------------------------------------------------------------------ replaced attributes

def replace_attribute(obj: Any, attribute: str, value: Any, name: str) -> Callable[[], None]:
    """Put `value` at `obj.attribute` (a pipeline's scheduler, a swapped-in component) under `name`.
    Replacements nest; undoing one, in any order, leaves what the others would have left, and an attribute
    something else has replaced since stays as it is."""
    entries = obj.__dict__.setdefault(REPLACED, {}).setdefault(attribute, [])
    if any(entry[0] == name for entry in entries):
        raise ValueError(f"{type(obj).__name__}.{attribute} is already replaced by {name!r}")
    entries.append([name, value, obj.__dict__.get(attribute, _MISSING)])
    obj.__dict__[attribute] = value   # not setattr: DiffusionPipeline.__setattr__ would rewrite its config
    return functools.partial(restore_attribute, obj, attribute, name)


def restore_attribute(obj: Any, attribute: str, name: str) -> None:
    table = obj.__dict__.get(REPLACED, {})
    entries = table.get(attribute, [])
    index = next((i for i, entry in enumerate(entries) if entry[0] == name), None)
    if index is None:
        return
    _, value, previous = entries.pop(index)
    if index < len(entries):
        entries[index][2] = previous   # the replacement made after this one now falls back past it
    elif obj.__dict__.get(attribute) is value:
        if previous is _MISSING:
            del obj.__dict__[attribute]
        else:
            obj.__dict__[attribute] = previous
    if not entries:
        del table[attribute]
    if not table:
        del obj.__dict__[REPLACED]


def replaced_attributes(obj: Any) -> list[tuple[str, str]]:
    table = getattr(obj, "__dict__", {}).get(REPLACED, {})
    return [(attr, entry[0]) for attr, entries in table.items() for entry in entries]


# ------------------------------------------------------------------------------------- module state swaps

def _owned_by_hooks(key: str, value: Any) -> bool:
    # What the hooks above put on a module and take off again themselves: a state swap leaves them alone,
    # so a hook attached after the swap and removed after its undo finds its things where it left them.
    return key.startswith("_planner_") or key == "forward" or isinstance(value, HookRegistry)


def _snapshot(module: torch.nn.Module) -> list:
    state = []
    for m in module.modules():
        params = dict(m._parameters)
        data = {k: p.data for k, p in params.items() if p is not None}
        state.append((m, dict(m.__dict__), dict(m._modules), params, data, dict(m._buffers)))
    return state


def _restore(state: list) -> None:
    for m, attrs, modules, params, data, buffers in state:
        for key in [k for k, v in m.__dict__.items() if k not in attrs and not _owned_by_hooks(k, v)]:
            del m.__dict__[key]
        m.__dict__.update({k: v for k, v in attrs.items() if not _owned_by_hooks(k, v)})
        m._modules.clear()
        m._modules.update(modules)
        m._parameters.clear()
        m._parameters.update(params)
        for k, d in data.items():
            params[k].data = d
        m._buffers.clear()
        m._buffers.update(buffers)


class StateSwap:
    """A named in-place change of `module`'s tree (children, parameter objects and their data, buffers,
    instance attributes), as quantisers make it: create it, change the module, call `done()`. `undo()`
    puts back the very objects that were there (outputs come back bit for bit), `redo()` the changed ones;
    hooks attached meanwhile stay where they are. Listed by `attached` while in effect."""

    def __init__(self, module: torch.nn.Module, name: str) -> None:
        if name in swap_names(module):
            raise ValueError(f"{type(module).__name__} already has a state swap named {name!r}")
        self.module, self.name = module, name
        self.before, self.after = _snapshot(module), None
        module.__dict__.setdefault(SWAPS, {})[name] = self

    def done(self) -> None:
        self.after = _snapshot(self.module)

    def undo(self) -> None:
        table = self.module.__dict__.get(SWAPS, {})
        if table.get(self.name) is not self:
            return
        _restore(self.before)
        del table[self.name]
        if not table:
            del self.module.__dict__[SWAPS]

    def redo(self) -> None:
        if self.name in swap_names(self.module) or self.after is None:
            return
        _restore(self.after)
        self.module.__dict__.setdefault(SWAPS, {})[self.name] = self


def swap_names(module: torch.nn.Module) -> list[str]:
    return list(getattr(module, "__dict__", {}).get(SWAPS, {}))


# --------------------------------------------------------------------------------------------- listing

def attached(pipe) -> list[tuple[str, str]]:
    """Every named hook on `pipe`: [(where, name)], e.g. ("pipeline", "planner.sampler"),
    ("scheduler.step", "planner.steps"), ("unet.mid_block", "planner.deepcache")."""
    out = [("pipeline", n) for n in call_hook_names(pipe)]
    out += [(f"pipeline.{attr}", n) for attr, n in replaced_attributes(pipe)]
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
            out += [(where, n) for n in swap_names(module)]
            out += [(f"{where}.{attr}", n) for attr, n in replaced_attributes(module)]
    return out


def is_hooked(module: torch.nn.Module) -> bool:
    """Does anything intercept or rewrite this module's calls (our hooks, diffusers' hooks, a patched
    `forward`, PyTorch forward hooks)? Exporters refuse such modules: the graph would freeze them."""
    return bool(call_hook_names(module) or forward_hook_names(module) or "forward" in module.__dict__
                or module._forward_hooks or module._forward_pre_hooks)
