"""The adapter contract: what vidrt needs to know about a model family.

Algorithms (slicing, policies, profiling) read an adapter's *description* of a pipeline: which module
is the denoiser, which submodules are spatial / temporal / token-wise, what the stages are and which models
run in each, which axes the slicer chunks. They never test a family's name. The dry-run simulator
(vidrt.memory.simulate) also asks the adapter how to build its pipeline from configs and to run its stages
on fake tensors (the scripts live in wan_sim.py and unet_sim.py).
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from vidrt.core.errors import VidrtError
from vidrt.core.windows import DecodeWindows
from vidrt.models.loading import check_family_folder, first_line, hub_failure, looks_like_hub_id
from vidrt.models.specs import FamilySpec
from vidrt.models.single_file import load_denoiser, read_single_file

# Module roles the slicer understands.
SPATIAL = "spatial"      # treats each frame independently: slice the batch*frames axis
TEMPORAL = "temporal"    # mixes frames at one spatial position: slice the positions axis
TOKEN = "token"          # DiT block on a token sequence: slice queries / tokens


@dataclass(frozen=True)
class ModuleRoles:
    """Qualified names (relative to the denoiser) of submodules by role."""

    spatial: tuple[str, ...] = ()
    temporal: tuple[str, ...] = ()
    token: tuple[str, ...] = ()

    def of(self, role: str) -> tuple[str, ...]:
        return getattr(self, role)


@dataclass(frozen=True)
class Stage:
    name: str
    modules: tuple[str, ...]  # pipeline attributes that run in this stage
    # of these, the ones that take turns (Wan 2.2 A14B's two experts: one for the high-noise steps, the other
    # after the boundary): under model offload only the one running is on the accelerator
    alternate: tuple[str, ...] = ()


@dataclass
class RenderRequest:
    """What the runner asks of a pipeline call (resolved from the config)."""

    prompt: str
    negative_prompt: str
    frames: int
    height: int
    width: int
    steps: int
    guidance: float
    seed: int
    image: Any = None  # PIL image for I2V families
    video: Any = None  # vidrt.core.video_input.VideoInput for video-to-video
    strength: float = 1.0   # video-to-video: the share of the schedule that runs (1: all of it)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def denoise_steps(self) -> int:
        """The steps the pipeline runs: all of them, or a video-to-video render's share (as diffusers trims)."""
        return strength_steps(self.steps, self.strength) if self.video is not None else self.steps


def strength_steps(steps: int, strength: float) -> int:
    """The steps a video-to-video render runs of a `steps`-step schedule at `strength` (as diffusers' video-to-video
    pipelines trim their schedules: `get_timesteps`)."""
    return min(int(steps * strength), steps)


def _strength_start(pipe, req: RenderRequest, device):
    """A fresh copy of the pipeline's scheduler set up as diffusers' video-to-video pipelines set theirs
    (`retrieve_timesteps`, then `get_timesteps` for `req.strength`), and the first timestep they run."""
    if req.denoise_steps < 1:    # (a config is refused earlier; this guards a request built by hand)
        raise VidrtError(f"strength: {req.strength} x {req.steps} steps leaves no step to run; raise strength or "
                         "steps")
    scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config)
    scheduler.set_timesteps(req.steps, device=device)
    t_start = max(req.steps - req.denoise_steps, 0) * scheduler.order
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(t_start)
    return scheduler, scheduler.timesteps[t_start:t_start + 1]


def model_folder(pipe) -> str | None:
    """The folder (or hub id) a loaded pipeline came from, where a trained sample keeps its vidrt.json."""
    return getattr(getattr(pipe, "config", None), "_name_or_path", None) if pipe is not None else None


class ModelAdapter:
    """One model family. Subclasses fill the class attributes and the hooks below."""

    spec: ClassVar[FamilySpec]              # the family's static facts (vidrt.models.specs)
    denoiser_attr: ClassVar[str] = "unet"
    # video-to-video runs the text-to-video pipeline itself, given the noised clip's latents, its schedule cut to
    # start at the strength's first step (vidrt.run.steps); False: the family's own video-to-video pipeline
    video_schedule_cut: ClassVar[bool] = False
    text_encoder_attr: ClassVar[str] = "text_encoder"
    image_encoder_attr: ClassVar[str | None] = None
    # denoiser forward arguments that carry a frame axis, by layout (see vidrt.engine.long); the first is the input
    frame_inputs: ClassVar[dict[str, str]] = {}
    long_noise_reschedule: ClassVar[bool] = False  # FreeNoise-style noise reuse across context windows
    # latent frames at the start of a window that the model always makes as a clip's start (Wan's causal VAE
    # encodes frame 0 alone into latent frame 0, so the denoiser renders every window's first latent frame as a
    # first frame): windows after the first leave them to the window before (vidrt.engine.long)
    window_start_latents: ClassVar[int] = 0
    frame_parallel: ClassVar[bool] = False          # UNet frames split over ranks (vidrt.engine.distributed.unet_fp)
    attention_api: ClassVar[str] = "processor"     # "backend": processors honour set_attention_backend
    stages: ClassVar[tuple[Stage, ...]] = ()      # the simulator places each stage's models by these
    latent_scale: ClassVar[int] = 8                # pixels per latent pixel on each side (the VAE's factor)

    @property
    def family(self) -> str:
        return self.spec.family

    @property
    def pipeline_class_names(self) -> tuple[str, ...]:
        return self.spec.pipeline_class_names

    @property
    def temporal_compression(self) -> int:
        return self.spec.temporal_compression

    # ---- loading -------------------------------------------------------------------------------
    def pipeline_class(self, with_image: bool):
        raise NotImplementedError

    def load(self, path: str | Path, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
             *, with_image: bool = False, allow_pickle: bool = False, weights: str | Path | None = None,
             weights_2: str | Path | None = None, **kwargs):
        """Load through the real `from_pretrained` (a local folder or a hub id). `weights`: a single GGUF or
        safetensors file holding the denoiser (vidrt.models.single_file), loaded with the folder's config in
        place of the folder's own denoiser weights; `weights_2` the same for a second expert (`transformer_2`)."""
        cls = self.pipeline_class(with_image)
        local = Path(path)
        if local.exists():
            self.check_folder(local, allow_pickle=allow_pickle)
        elif not looks_like_hub_id(str(path)):
            raise VidrtError(f"model.path: no such folder {path}")
        if weights is not None:
            kwargs[self.denoiser_attr] = self.load_denoiser_file(path, weights, dtype)
        if weights_2 is not None:
            if self.spec.second_expert is None:
                raise VidrtError(f"model.weights_2: {self.family} pipelines have one denoiser, no second expert to "
                                 "replace; remove model.weights_2")
            kwargs[self.spec.second_expert] = self.load_denoiser_file(path, weights_2, dtype, self.spec.second_expert,
                                                                      "model.weights_2")
        try:
            pipe = cls.from_pretrained(str(path), torch_dtype=dtype, use_safetensors=not allow_pickle or None,
                                       **self.load_kwargs(path, dtype, allow_pickle), **kwargs)
        except VidrtError:
            raise
        except Exception as exc:  # corrupt or incomplete folders surface as many exception types
            if not local.exists():   # a hub id: say why the hub did not give it (diffusers points to a traceback)
                raise VidrtError(f"model.path: {path} is not a local folder, and loading it as a Hugging Face hub "
                                 f"id failed: {hub_failure(exc)}") from None
            reason = first_line(exc).split(" Please check out the root cause")[0]
            raise VidrtError(f"model.path: cannot load {self.family} pipeline from {path!s}: "
                             f"{type(exc).__name__}: {reason}") from None
        pipe.to(device)
        return self.prepare(pipe)

    def load_kwargs(self, path, dtype, allow_pickle) -> dict[str, Any]:
        return {}

    def denoiser_class(self):
        import diffusers

        return getattr(diffusers, self.spec.denoiser_class_names[0])

    def load_denoiser_file(self, path, weights, dtype, subfolder: str | None = None,
                           key: str = "model.weights") -> nn.Module:
        file = read_single_file(weights, key)
        return load_denoiser(self.denoiser_class(), file, str(path), subfolder or self.spec.denoiser_folder, dtype,
                             self.family, key)

    def check_folder(self, folder: Path, *, allow_pickle: bool) -> dict:
        """Refuse folders that are not a pipeline of this family, or whose weights are pickle-only."""
        return check_family_folder(folder, self.spec, allow_pickle=allow_pickle)

    def prepare(self, pipe):
        """Family-specific fixes applied to every pipeline (loaded or tiny)."""
        for name in ("text_encoder", "image_encoder", "vae", self.denoiser_attr, self.spec.second_expert or ""):
            module = getattr(pipe, name, None)
            if isinstance(module, nn.Module):
                module.eval().requires_grad_(False)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def tiny(self, seed: int = 0, **kwargs):
        """A random-init twin of the real classes with an in-memory tokenizer (tests)."""
        raise NotImplementedError

    # ---- description ---------------------------------------------------------------------------
    def denoiser(self, pipe) -> nn.Module:
        return getattr(pipe, self.denoiser_attr)

    def roles(self, denoiser: nn.Module) -> ModuleRoles:
        raise NotImplementedError

    def native_frame_count(self, pipe=None) -> int:
        """The native length of this pipeline's model (a trained sample's vidrt.json beside its weights)."""
        return self.spec.native_frame_count(model_folder(pipe))

    def declared_decode_window(self, pipe=None) -> tuple[int, int] | None:
        """The (window, overlap) decode frames this pipeline's model declares (a trained sample's vidrt.json)."""
        return self.spec.declared_decode_window(model_folder(pipe))

    def latent_frames(self, frames: int) -> int:
        return self.spec.latent_frames(frames)

    # ---- running -------------------------------------------------------------------------------
    def encode_prompt(self, pipe, req: RenderRequest, device=None) -> dict[str, torch.Tensor]:
        """The prompt (and negative prompt) embeddings, encoded on `device` (default: the pipeline's execution
        device; the CPU for a text encoder kept on the host)."""
        raise NotImplementedError

    def call_kwargs(self, pipe, req: RenderRequest) -> dict[str, Any]:
        raise NotImplementedError

    def pipeline_latents(self, step_latents: torch.Tensor, req: RenderRequest) -> torch.Tensor:
        """The scheduler step's output in the layout the pipeline accepts as `latents=` (for resuming)."""
        return step_latents

    def decode_stream(self, pipe, latents: torch.Tensor, windows: DecodeWindows | None = None) -> Iterator[torch.Tensor]:
        """Latents -> video chunks (B, C, f, H, W) in [-1, 1], in frame order (see runner: streamed to mp4).
        `windows`: re-anchored decode windows, for a causal video VAE (`spec.causal_vae`); the config refuses them
        for the others."""
        raise NotImplementedError

    def decode(self, pipe, latents: torch.Tensor, windows: DecodeWindows | None = None) -> torch.Tensor:
        """Latents -> the whole video tensor (B, C, F, H, W) in [-1, 1]."""
        return torch.cat(list(self.decode_stream(pipe, latents, windows)), dim=2)

    def generator(self, req: RenderRequest, device) -> torch.Generator:
        gen_device = "cpu" if torch.device(device).type == "mps" else device
        return torch.Generator(device=gen_device).manual_seed(req.seed)

    # ---- video-to-video ------------------------------------------------------------------------
    video_chunk_frames: ClassVar[int] = 16        # input frames read, preprocessed and encoded at a time

    def video_pipeline(self, pipe):
        """The pipeline that runs video-to-video on `pipe`'s components: the family's video-to-video pipeline
        (diffusers' `from_pipe`), or `pipe` itself where `video_schedule_cut`."""
        raise VidrtError(f"input_video: the {self.family} family has no video-to-video pipeline")

    def video_chunks(self, pipe, req: RenderRequest, device, dtype: torch.dtype) -> Iterator[torch.Tensor]:
        """The input video's first `req.frames` frames, `video_chunk_frames` at a time, preprocessed by the
        pipeline's own video processor (resized to the render size, in [-1, 1]): (1, C, f, H, W) tensors."""
        from PIL import Image

        for chunk in req.video.chunks(req.frames, self.video_chunk_frames):
            frames = [Image.fromarray(f) for f in chunk]
            yield pipe.video_processor.preprocess_video(frames, height=req.height, width=req.width).to(device, dtype)

    def encode_video(self, pipe, req: RenderRequest, generator, device) -> torch.Tensor:
        """The input video's clean latents, in the layout `noised_video_latents` takes, encoded chunk by chunk."""
        raise NotImplementedError

    def noised_video_latents(self, pipe, clean: torch.Tensor, req: RenderRequest, generator, device) -> torch.Tensor:
        """`clean` noised to the first timestep the video-to-video pipeline runs, as it would noise them (noise of
        their shape and dtype from `generator`; the scheduler's add_noise, or scale_noise for flow matching):
        what it takes as `latents=` (it then denoises them over `req.denoise_steps` steps)."""
        from diffusers.utils.torch_utils import randn_tensor

        scheduler, t0 = _strength_start(pipe, req, device)
        noise = randn_tensor(tuple(clean.shape), generator=generator, device=device, dtype=clean.dtype)
        if hasattr(scheduler, "add_noise"):
            return scheduler.add_noise(clean, noise, t0)
        return scheduler.scale_noise(clean, t0, noise)

    def video_latents(self, pipe, req: RenderRequest, generator, device) -> torch.Tensor:
        return self.noised_video_latents(pipe, self.encode_video(pipe, req, generator, device), req, generator,
                                         device)

    # ---- slicing -------------------------------------------------------------------------------
    def denoiser_calls_per_step(self, cfg: bool) -> int:
        """How many times the pipeline calls the denoiser per step (the UNet pipelines batch both CFG streams
        into one call)."""
        return 1

    def slicing_axes(self, frames: int, height: int, width: int, batch: int) -> dict[str, int]:
        """Lengths of the axes the slicer chunks for one denoiser call, by the SlicingConfig field they size
        (the planner's candidates take halvings of each). `batch`: the rows of one call with CFG (2) or
        without (1). Default: a UNet's spatial modules see batch * latent frames samples, its temporal
        modules the latent positions."""
        s = self.latent_scale
        return {"frames": batch * self.latent_frames(frames), "positions": (height // s) * (width // s)}

    # ---- simulation (vidrt.memory.simulate) ----------------------------------------------------
    def simulation_components(self, model_cfg, comps: dict[str, Any]) -> dict[str, Any]:
        """The components a dry run of `model_cfg` builds, given those of its folder or known id (the
        family adds what loading would add)."""
        return comps

    def build_simulated_denoiser(self, comps: dict[str, Any], build_module) -> nn.Module:
        """The denoiser as the pipeline runs it, from the component configs (`build_module(component)`)."""
        return build_module(comps[self.denoiser_attr])

    def simulated_text_len(self, comps: dict[str, Any], mods: dict[str, Any], pipe=None) -> int:
        """The padded prompt length: the tokenizer's length capped at 512, as the T5 pipelines pad."""
        if pipe is not None and getattr(pipe, "tokenizer", None) is not None:
            return int(min(512, pipe.tokenizer.model_max_length or 512))
        if "_tokenizer" in comps:  # a local folder's tokenizer
            return int(min(512, comps["_tokenizer"].config["model_max_length"]))
        return 512

    def simulated_text_states(self, te: nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The text encoder's output the pipeline keeps (a T5 encoder's last hidden state)."""
        return te(ids, attention_mask=mask).last_hidden_state

    def simulate_stages(self, tracker, mods: dict[str, Any], params) -> None:
        """Run the pipeline's stages on the fake modules `mods` (text_encoder, image_encoder, vae, denoiser),
        each inside `tracker.stage(name, params=...)`; `params`: a models.simulation.SimParams."""
        raise NotImplementedError
