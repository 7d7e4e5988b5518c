"""The one hook mechanism: named, listed, chained in a known order, removable in any order, leaving
objects exactly as they were."""
import inspect
import itertools

import pytest
import torch

from ground.hooks import (Observer, Rewrite, StateSwap, add_call_hook, add_forward_hook, add_method_hook, attached,
                          call_hook_names, forward_hook_names, is_hooked, method_hook_names, replace_attribute,
                          swap_names)


class Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(3, 3)

    def forward(self, x):
        return self.lin(x)


def _tag(label, log):
    def hook(call, *args, **kwargs):
        log.append(label)
        return call(*args, **kwargs)
    return hook


def test_call_hooks_chain_last_added_outermost_and_restore_the_class():
    net, log = Net(), []
    x = torch.randn(2, 3)
    expected = net(x)
    undo_a = add_call_hook(net, "planner.a", _tag("a", log))
    undo_b = add_call_hook(net, "planner.b", _tag("b", log))
    assert type(net).__name__ == "Net" and type(net) is not Net
    assert torch.equal(net(x), expected) and log == ["b", "a"]
    assert call_hook_names(net) == ["planner.a", "planner.b"]
    undo_a()   # out of order: b keeps working
    log.clear()
    assert torch.equal(net(x), expected) and log == ["b"]
    undo_b()
    undo_b()   # idempotent
    assert type(net) is Net and "_planner_call_hooks" not in net.__dict__ and "_planner_call_class" not in net.__dict__


@pytest.mark.parametrize("order", list(itertools.permutations(range(3))))
def test_any_removal_order_leaves_the_object_exactly_as_it_was(order):
    net = Net()
    before = dict(net.__dict__)
    undos = [add_call_hook(net, "planner.c", lambda call, *a, **k: call(*a, **k)),
             add_forward_hook(net, "planner.f", Observer()),
             add_forward_hook(net.lin, "planner.g", Rewrite(lambda forward, x: forward(x) * 1.0))]
    for i in order:
        undos[i]()
    assert type(net) is Net and set(net.__dict__) == set(before) and not is_hooked(net) and not is_hooked(net.lin)


def test_a_call_hook_can_replace_what_the_object_does():
    net = Net()
    add_call_hook(net, "planner.zero", lambda call, x: torch.zeros_like(x))
    assert torch.equal(net(torch.ones(1, 3)), torch.zeros(1, 3))


def test_names_are_unique_per_object():
    net = Net()
    add_call_hook(net, "planner.x", lambda call, *a, **k: call(*a, **k))
    with pytest.raises(ValueError, match="planner.x"):
        add_call_hook(net, "planner.x", lambda call, *a, **k: call(*a, **k))


class Scheduler:
    def set_timesteps(self, num_inference_steps: int, device=None, timesteps=None):
        self.timesteps = list(range(num_inference_steps))

    def step(self, x):
        return x + 1


def test_method_hooks_keep_the_signature_pipelines_inspect_and_unwind():
    s, log = Scheduler(), []
    undo_1 = add_method_hook(s, "step", "planner.one", _tag(1, log))
    undo_2 = add_method_hook(s, "step", "planner.two", _tag(2, log))
    add_method_hook(s, "set_timesteps", "planner.one", _tag("t", log))
    assert "timesteps" in inspect.signature(s.set_timesteps).parameters
    assert s.step(1) == 2 and log == [2, 1]
    assert method_hook_names(s) == {"step": ["planner.one", "planner.two"], "set_timesteps": ["planner.one"]}
    undo_1()
    undo_2()
    assert "step" not in s.__dict__ and s.step(1) == 2


def test_forward_hooks_use_diffusers_registry_and_leave_no_trace():
    net = Net()
    x = torch.randn(2, 3)
    seen = []
    undo_obs = add_forward_hook(net.lin, "planner.obs", Observer(post=seen.append))
    undo_rw = add_forward_hook(net.lin, "planner.double", Rewrite(lambda forward, x: 2 * forward(x)))
    out = net(x)
    assert forward_hook_names(net.lin) == ["planner.obs", "planner.double"]
    assert torch.allclose(out, 2 * torch.nn.functional.linear(x, net.lin.weight, net.lin.bias))
    assert len(seen) == 1
    undo_obs()
    undo_rw()
    assert "_diffusers_hook" not in net.lin.__dict__ and "forward" not in net.lin.__dict__


def test_forward_hooks_leave_diffusers_own_hooks_alone():
    from diffusers.hooks import HookRegistry, ModelHook

    net = Net()
    HookRegistry.check_if_exists_or_initialize(net.lin).register_hook(ModelHook(), "diffusers_own")
    undo = add_forward_hook(net.lin, "planner.obs", Observer())
    undo()
    assert forward_hook_names(net.lin) == ["diffusers_own"]


def test_replaced_attribute_comes_back_unless_replaced_again():
    class Pipe:
        pass

    pipe = Pipe()
    pipe.scheduler = "original"
    undo = replace_attribute(pipe, "scheduler", "ours", "planner.sampler")
    assert pipe.scheduler == "ours" and ("pipeline.scheduler", "planner.sampler") in attached(pipe)
    undo()
    assert pipe.scheduler == "original" and attached(pipe) == []
    undo = replace_attribute(pipe, "scheduler", "ours", "planner.sampler")
    pipe.__dict__["scheduler"] = "someone else's"
    undo()
    assert pipe.scheduler == "someone else's"


@pytest.mark.parametrize("order", list(itertools.permutations(range(3))))
def test_replacements_of_one_attribute_nest_and_come_off_in_any_order(order):
    class Pipe:
        pass

    pipe = Pipe()
    pipe.scheduler = "original"
    undos = [replace_attribute(pipe, "scheduler", f"value {i}", f"planner.{i}") for i in range(3)]
    assert pipe.scheduler == "value 2" and [n for _, n in attached(pipe)] == ["planner.0", "planner.1", "planner.2"]
    for k, i in enumerate(order):
        undos[i]()
        left = [j for j in range(3) if j not in order[:k + 1]]
        assert pipe.scheduler == (f"value {left[-1]}" if left else "original")
    assert attached(pipe) == [] and set(vars(pipe)) == {"scheduler"}


def test_a_state_swap_puts_the_same_objects_back_and_leaves_hooks_alone():
    net = Net()
    x = torch.randn(2, 3)
    expected, weight, lin = net(x), net.lin.weight, net.lin
    swap = StateSwap(net, "planner.swap")
    net.lin = torch.nn.Linear(3, 3).to(torch.float64)   # a quantiser replacing a child...
    net.lin.weight.data = net.lin.weight.data * 0        # ...and changing data in place
    swap.done()
    undo_obs = add_forward_hook(net, "planner.obs", Observer())   # attached after the swap
    assert swap_names(net) == ["planner.swap"]
    swap.undo()
    assert net.lin is lin and net.lin.weight is weight and torch.equal(net(x), expected)
    assert swap_names(net) == [] and forward_hook_names(net) == ["planner.obs"]
    swap.redo()
    assert net.lin is not lin and net.lin.weight.dtype == torch.float64 and swap_names(net) == ["planner.swap"]
    undo_obs()
    swap.undo()
    swap.undo()   # idempotent
    assert net.lin is lin and set(net.__dict__) == set(Net().__dict__) and torch.equal(net(x), expected)


def test_attached_lists_every_place(tiny_sd):
    from ground.steps import release_steps, track_steps

    tracker = track_steps(tiny_sd)
    undo = add_call_hook(tiny_sd.unet.mid_block, "planner.demo_hook", lambda call, *a, **k: call(*a, **k))
    try:
        where = attached(tiny_sd)
        assert ("pipeline", "planner.steps") in where and ("unet.mid_block", "planner.demo_hook") in where
    finally:
        undo()
        release_steps(tracker)
    assert attached(tiny_sd) == []
