"""What the adapters' simulated stage scripts share (wan_sim.py, unet_sim.py).

vidrt.memory.simulate builds a pipeline's real classes under FakeTensorMode and hands them, with a tracker and
the run's shape, to `adapter.simulate_stages`: each family's script runs its stages the way its diffusers
pipeline does, inside `tracker.stage(name, params=...)`. The tracker is duck-typed here, so the models layer
needs nothing from the memory layer.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import SimpleNamespace

import torch


@dataclass
class SimParams:
    """The shape of a simulated run. `denoise_variants` / `decode_variants`: set-up callables, one stage each
    (`denoise#i`, `vae_decode#j`: the planner measures several slicing / tiling settings in one session);
    None runs the plain stage once."""

    frames: int
    height: int
    width: int
    cfg: bool                      # classifier-free guidance
    guidance: float
    dtype: torch.dtype
    with_image: bool
    text_len: int
    denoise_variants: Sequence[Callable[[], None]] | None = None
    decode_variants: Sequence[Callable[[], None]] | None = None
    fast_cfg: bool = False         # planner: fewer calls where that keeps the same peak
    # a long video runs the denoiser on context windows: the frames of one window's call, and the frames of
    # the pipeline's loop tensors that stay on the accelerator (the window's when the loop is on the host)
    denoise_frames: int | None = None
    loop_frames: int | None = None
    video_input: bool = False      # video-to-video: the input clip is encoded first (stage video_encode)
    per_token_timesteps: bool = False   # one timestep per latent token (Wan 2.2 TI2V: expand_timesteps)

    @property
    def window_frames(self) -> int:
        return self.denoise_frames or self.frames


def _noop() -> None:
    return None


def stage_variants(variants, stage: str):
    """Stage names and set-up callables: one plain stage, or `stage#i` per variant."""
    if not variants:
        return [(stage, _noop)]
    return [(f"{stage}#{i}", fn) for i, fn in enumerate(variants)]


def encode_text(tracker, adapter, te, p) -> list[torch.Tensor]:
    """The text_encode stage: the prompt (and with CFG the negative prompt) through the text encoder at the
    pipeline's padded length."""
    ids = torch.zeros(1, p.text_len, dtype=torch.long)
    mask = torch.ones(1, p.text_len, dtype=torch.long)
    outs = []
    with tracker.stage("text_encode", params={"text_encoder": te}):
        for _ in range(2 if p.cfg else 1):
            h = adapter.simulated_text_states(te, ids, mask)
            outs.append(h.to(p.dtype))
            del h
    return outs


def stream_decode(adapter, vae, latents: torch.Tensor) -> None:
    """The decode as a render runs it: the adapter's stream, each chunk handed on (to the video writer on the
    host) before the next is decoded, so the whole video never sits on the accelerator."""
    for chunk in adapter.decode_stream(SimpleNamespace(vae=vae), latents):
        del chunk
