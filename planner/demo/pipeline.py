"""The demo pipelines: class labels in, 16x16 grey images out, classifier-free guidance, any scheduler.

Two thin subclasses keep diffusers' naming conventions (`unet` for UNets, `transformer` for DiTs), so
that tools written for those attributes (DeepCache, diffusers' cache hooks) find the denoiser.
"""
from __future__ import annotations

import inspect

import torch
from diffusers import DiffusionPipeline, DiTTransformer2DModel, ImagePipelineOutput, UNet2DModel
from diffusers.utils.torch_utils import randn_tensor

from planner.demo.data import NULL_CLASS

DEFAULT_GUIDANCE = 2.0


class DigitsPipeline(DiffusionPipeline):
    denoiser_name = ""

    @property
    def denoiser(self) -> torch.nn.Module:
        return getattr(self, self.denoiser_name)

    def _sample_shape(self, batch: int) -> tuple[int, ...]:
        cfg = self.denoiser.config
        size = cfg.sample_size
        return (batch, cfg.in_channels, size, size)

    @torch.no_grad()
    def __call__(
        self,
        class_labels: list[int] | torch.Tensor,
        num_inference_steps: int = 50,
        guidance_scale: float = DEFAULT_GUIDANCE,
        generator: torch.Generator | list[torch.Generator] | None = None,
        timesteps: list[int] | None = None,
        output_type: str = "pt",
        return_dict: bool = True,
    ):
        labels = torch.as_tensor(class_labels, dtype=torch.long).reshape(-1)
        batch = labels.numel()
        # Latents and scheduler math stay in float32 whatever the denoiser runs in (bf16 plans): the same
        # seed gives the same starting noise, and low precision stays inside the network.
        device, dtype = self._execution_device, self.denoiser.dtype
        labels = labels.to(device)
        sample = randn_tensor(self._sample_shape(batch), generator=generator, device=device, dtype=torch.float32)
        if timesteps is not None:
            self.scheduler.set_timesteps(timesteps=list(timesteps), device=device)
        else:
            self.scheduler.set_timesteps(num_inference_steps, device=device)
        sample = sample * self.scheduler.init_noise_sigma
        use_cfg = guidance_scale > 1.0
        cond = torch.cat([labels, torch.full_like(labels, NULL_CLASS)]) if use_cfg else labels
        # Only stochastic samplers take a generator (as in diffusers' prepare_extra_step_kwargs).
        step_kwargs = {}
        if "generator" in inspect.signature(self.scheduler.step).parameters:
            step_kwargs["generator"] = generator[0] if isinstance(generator, list) else generator
        for t in self.progress_bar(self.scheduler.timesteps):
            model_in = torch.cat([sample, sample]) if use_cfg else sample
            model_in = self.scheduler.scale_model_input(model_in, t)
            t_batch = t.reshape(1).expand(model_in.shape[0]).to(device)
            eps = self.denoiser(model_in.to(dtype), t_batch, class_labels=cond).sample.float()
            if use_cfg:
                eps_cond, eps_uncond = eps.chunk(2)
                eps = eps_uncond + guidance_scale * (eps_cond - eps_uncond)
            sample = self.scheduler.step(eps, t, sample, **step_kwargs).prev_sample
        images = (sample.float() / 2 + 0.5).clamp(0, 1)
        if output_type == "pil":
            images = self.numpy_to_pil(images.permute(0, 2, 3, 1).cpu().numpy())
        elif output_type == "np":
            images = images.permute(0, 2, 3, 1).cpu().numpy()
        if not return_dict:
            return (images,)
        return ImagePipelineOutput(images=images)


class DigitsUNetPipeline(DigitsPipeline):
    denoiser_name = "unet"
    model_cpu_offload_seq = "unet"

    def __init__(self, unet: UNet2DModel, scheduler) -> None:
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)


class DigitsDiTPipeline(DigitsPipeline):
    denoiser_name = "transformer"
    model_cpu_offload_seq = "transformer"

    def __init__(self, transformer: DiTTransformer2DModel, scheduler) -> None:
        super().__init__()
        self.register_modules(transformer=transformer, scheduler=scheduler)


from planner.demo import anatomy as _anatomy  # noqa: E402,F401  registers the demo pipelines' adapter
