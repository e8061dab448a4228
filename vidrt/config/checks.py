"""What a render refuses before any model loads, from the config and the files it names: a missing or wrong
model folder, an image or input video that is missing or the model cannot take, more steps than its scheduler has, a video beyond host
memory; and the warning for a render with a lot of work."""
from __future__ import annotations

from pathlib import Path

from vidrt.config.schema import RenderConfig
from vidrt.core.errors import VidrtError
from vidrt.core.video_input import VideoInput
from vidrt.core.windows import decode_windows_for, window_plan
from vidrt.core.units import format_bytes
from vidrt.models.known_ids import known_dir
from vidrt.models.loading import (check_pipeline_folder, host_memory, local_or_hub, pixels_per_token,
                                   read_index, weight_files)
from vidrt.models.single_file import SingleFile, loadable_class_name, read_single_file
from vidrt.models.specs import get_spec, tiles_by_default

LARGE_WORK = 1000           # denoiser calls from which a render warns how much work it is (50 steps x CFG: 100)


def _places(value: str, cfg: RenderConfig) -> str:
    if Path(value).expanduser().is_absolute():
        return ""
    cwd = Path.cwd()
    beside = cfg.source.resolve().parent if cfg.source is not None else None
    if beside is None or beside == cwd:
        return f" (looked in the working directory {cwd})"
    return f" (looked in the working directory {cwd}, beside the config in {beside} and in the folders above it)"


def model_path_places(cfg: RenderConfig) -> str:
    """Where a relative model.path was looked for, for messages about a path that is not a folder."""
    return _places(cfg.model.path, cfg)


def check_request(cfg: RenderConfig, *, model_files: bool = True) -> list[str]:
    """Refuse before any model loads what the config and its files decide: a missing or wrong model folder (not
    checked with `model_files=False`: a ready-made pipeline), an image the model cannot take or lacks, more steps
    than its scheduler has, a video beyond host memory. Returns warnings (a long render) to print."""
    spec = get_spec(cfg.model.family)
    folder = None
    if model_files:
        folder = local_or_hub(cfg.model.path, "model.path", _places(cfg.model.path, cfg), "model_index.json")
    if cfg.model.motion_adapter and model_files:
        local_or_hub(cfg.model.motion_adapter, "model.motion_adapter", _places(cfg.model.motion_adapter, cfg),
                     "config.json", kind="MotionAdapter")
    if cfg.model.weights and model_files:
        check_weights_file(cfg, spec, folder)
    for key in ("image", "input_video"):
        value = getattr(cfg, key)
        if value and not Path(value).expanduser().is_file():
            raise VidrtError(f"{key}: no such file {value}{_places(value, cfg)}")
    if folder is not None:
        check_pipeline_folder(folder, spec, image=bool(cfg.image), steps=cfg.steps,
                              allow_pickle=cfg.model.allow_pickle)
    configs = folder if folder is not None else known_dir(cfg.model.path) if model_files else None
    check_token_multiple(cfg, spec, pixels_per_token(configs, spec) if configs is not None else None)
    if cfg.long is not None:     # a decode window the model cannot use, or an overlap as long as the window
        decode_windows_for(spec, cfg.long.decode_window, cfg.long.decode_overlap, spec.declared_decode_window(folder))
        if cfg.long.noise_reschedule and cfg.input_video:
            raise VidrtError("long.noise_reschedule: a video-to-video render's noise is its input clip's (reusing "
                             "noise across windows would shuffle the clip's frames); remove the key")
    return _check_size(cfg, spec, folder)


def check_token_multiple(cfg: RenderConfig, spec, multiple: int | None) -> None:
    """height and width in whole denoiser tokens where the model's are larger than the family's rule (Wan 2.2
    TI2V: a 16x VAE and 2x2 patches, 32 pixels)."""
    for key in ("height", "width"):
        if multiple and multiple > spec.size_multiple and getattr(cfg, key) % multiple:
            raise VidrtError(f"{key}: {getattr(cfg, key)} is not a multiple of {multiple} (one token of "
                             f"{cfg.model.path}: its VAE compresses {multiple // 2}x and its denoiser patches 2x2)")


def has_two_experts(folder: Path | None, spec) -> bool:
    """Whether the pipeline folder holds two denoisers (Wan 2.2 A14B: `transformer_2` in model_index.json)."""
    if not spec.second_expert or folder is None or not (folder / "model_index.json").is_file():
        return False
    return bool((read_index(folder).get(spec.second_expert) or [None])[0])


def check_weights_file(cfg: RenderConfig, spec, folder: Path | None = None) -> SingleFile:
    """model.weights (and model.weights_2): readable .gguf / .safetensors files, for a family whose denoiser
    diffusers loads from a single file, one file per denoiser of the pipeline (Wan 2.2 A14B's two experts come as
    two files: the high-noise expert's in model.weights, the low-noise one's in model.weights_2)."""
    import diffusers

    experts = has_two_experts(folder, spec)
    if experts and not cfg.model.weights_2:
        raise VidrtError(f"model.weights: {cfg.model.path} has two experts ({spec.denoiser_folder} and "
                         f"{spec.second_expert}, Wan 2.2 A14B), and one file replaces one of them; give the "
                         "high-noise expert's file as model.weights and the low-noise expert's as model.weights_2")
    if cfg.model.weights_2 and (spec.second_expert is None or folder is not None and not experts):
        raise VidrtError(f"model.weights_2: {cfg.model.path} has one denoiser, no second expert"
                         f"{f' ({spec.second_expert})' if spec.second_expert else ''} to replace; remove "
                         "model.weights_2")
    cls = getattr(diffusers, spec.denoiser_class_names[0])
    files = []
    for key in ("weights", "weights_2"):
        value = getattr(cfg.model, key)
        if not value:
            continue
        if not Path(value).expanduser().is_file():
            raise VidrtError(f"model.{key}: no such file {value}{_places(value, cfg)}")
        if loadable_class_name(cls) is None:
            raise VidrtError(f"model.{key}: the {spec.family} family's {cls.__name__} has no single-file loader "
                             f"in diffusers; remove model.{key} and use a pipeline folder")
        files.append(read_single_file(value, f"model.{key}"))
    return files[0]


def input_frames(cfg: RenderConfig) -> int | None:
    """The frames of the config's input video when the render's length comes from it (video-to-video without
    `frames`), probed with decord; None otherwise."""
    if cfg.frames or not cfg.input_video:
        return None
    return VideoInput.open(cfg.input_video).count


def _check_size(cfg: RenderConfig, spec, folder: Path | None) -> list[str]:
    """Refuse a video whose loop cannot fit host memory; warn when its work is large."""
    native = spec.native_frame_count(folder)
    frames = spec.render_frames(cfg.frames, native, input_frames(cfg))
    long = cfg.long
    windows = window_plan(spec, frames, native, long.window if long else None,
                          long.overlap if long else None).windows
    streams = 2 if cfg.guidance > 1 else 1
    calls = windows * cfg.steps * streams
    tiled = cfg.memory.vae_tiling == "on" or (cfg.memory.vae_tiling == "auto" and tiles_by_default(cfg.height,
                                                                                                    cfg.width))
    need = spec.host_bytes(frames, cfg.height, cfg.width, streams, tiled)
    on_host = cfg.devices[0] == "cpu" or cfg.memory.offload in ("model", "group") or (
        cfg.devices[0] == "auto" and not Path("/proc/driver/nvidia/gpus").is_dir())   # where the weights stay
    weights = 0
    files = {spec.denoiser_folder: cfg.model.weights, spec.second_expert: cfg.model.weights_2}
    files = {sub: Path(f).expanduser() for sub, f in files.items() if f and sub}   # sub None: no 2nd expert
    if on_host and folder is not None:      # a single-file denoiser replaces the folder's own
        replaced = [folder / sub for sub in files]
        weights = sum(f.stat().st_size for f in weight_files(folder) if not any(r in f.parents for r in replaced))
    if on_host:
        weights += sum(f.stat().st_size for f in files.values() if f.is_file())
    parts = ", ".join(f"{k} {format_bytes(v)}" for k, v in {**need, "weights": weights}.items() if v)
    need_total = sum(need.values()) + weights
    total, available = host_memory()
    if total is not None and need_total > total:
        raise VidrtError(f"frames: {frames} frames of {cfg.height}x{cfg.width} need about {format_bytes(need_total)} "
                         f"of host memory ({parts}) but this machine has {format_bytes(total)}; render fewer frames "
                         "or a smaller size")
    warnings = []
    if calls > LARGE_WORK:
        plural = lambda n, word: f"{n:,} {word}{'s' if n != 1 else ''}"  # noqa: E731
        warnings.append(f"{frames} frames: {plural(windows, 'context window')} x {plural(cfg.steps, 'step')} x "
                        f"{plural(streams, 'CFG stream')} = {calls:,} denoiser calls (the model's native "
                        f"{native} frames: {cfg.steps * streams}); Ctrl-C stops after a step, --resume continues")
    if available is not None and need_total > available:
        warnings.append(f"this render needs about {format_bytes(need_total)} of host memory ({parts}); only "
                        f"{format_bytes(available)} are free")
    return warnings
