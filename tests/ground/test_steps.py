"""Step tracking follows whatever scheduler a call runs with, counts the evaluations a call really runs
(img2img after `strength`), and fires its events once per schedule and once per call end."""
import torch

from ground.generation import default_request, generate
from ground.hooks import attached, replace_attribute
from ground.steps import release_steps, track_steps


def _denoiser_calls(pipe):
    calls = []
    handle = pipe.unet.register_forward_pre_hook(lambda m, a: calls.append(1))
    return calls, handle


def test_tracker_counts_steps_and_events(tiny_sd):
    tracker = track_steps(tiny_sd)
    events = {"reset": 0, "end": 0, "steps": []}
    tracker.on_reset(lambda: events.__setitem__("reset", events["reset"] + 1))
    tracker.on_call_end(lambda: events.__setitem__("end", events["end"] + 1))
    tracker.on_step_end(events["steps"].append)
    try:
        generate(tiny_sd, default_request(tiny_sd, 1), steps=4)
        assert events == {"reset": 1, "end": 1, "steps": [0, 1, 2, 3]} and tracker.num_steps == 4
        assert ("pipeline", "planner.steps") in attached(tiny_sd)
        assert not any(w.startswith("scheduler") for w, _ in attached(tiny_sd))   # only during a call
    finally:
        release_steps(tracker)
    assert attached(tiny_sd) == []


def test_tracker_follows_a_scheduler_swapped_after_it_was_attached(tiny_sd):
    import diffusers

    tracker = track_steps(tiny_sd)
    seen = []
    tracker.on_step_end(seen.append)
    undo = replace_attribute(tiny_sd, "scheduler",
                             diffusers.EulerDiscreteScheduler.from_config(tiny_sd.scheduler.config), "planner.test")
    try:
        generate(tiny_sd, default_request(tiny_sd, 1), steps=3)
        assert seen == [0, 1, 2]
    finally:
        release_steps(tracker)   # the tracker goes first, the scheduler swap after: any order works
        undo()
    assert attached(tiny_sd) == []


def test_img2img_counts_the_steps_after_strength(tiny_sd):
    from diffusers import StableDiffusionImg2ImgPipeline

    pipe = StableDiffusionImg2ImgPipeline(**tiny_sd.components)
    pipe.set_progress_bar_config(disable=True)
    tracker = track_steps(pipe)
    counts = []
    tracker.on_step_end(lambda step: counts.append(tracker.num_steps))
    calls, handle = _denoiser_calls(pipe)
    try:
        image = torch.rand(1, 3, 32, 32)
        pipe(prompt="a cat", image=image, strength=0.5, num_inference_steps=10, output_type="np",
             generator=torch.Generator().manual_seed(0))
    finally:
        handle.remove()
        release_steps(tracker)
    assert len(calls) == 5 and set(counts) == {5}
