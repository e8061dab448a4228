"""The price of a run in seconds, before it runs: a simulated session's counted work (vidrt.memory.cost),
repeated as the real run repeats it, under one set of memory settings, on one GPU model (vidrt.memory.timemodel).

What the settings change:
- slicing / VAE tiling: which of the session's measured variants (`denoise#i`, `vae_decode#j`) the run is;
- offload "group": every denoiser call streams the denoiser's weights (a copy per block, or per weighted leaf
  at leaf level, where diffusers waits for each copy), the text encoder streams leaf by leaf; "model": each
  model moves to the accelerator once when its stage starts; "shard": each call all-gathers the other ranks'
  share of every block;
- offload group from disk: every streamed copy of the denoiser is read from its safetensors file first
  (DISK_READ_GBS, on the host thread, so nothing hides it), and each file is written once when its group
  first leaves the accelerator (DISK_WRITE_GBS, the "disk_write" entry);
- text encoder on the CPU: its forward runs on the host (HOST_FLOPS, host memory bandwidth);
- weights fp8: the denoiser's weights move (streamed, sharded, moved once, read from disk) at their fp8 bytes,
  and every call upcasts each cast layer to the compute dtype and casts it back (diffusers' layerwise casting:
  two memory-bound element-wise ops per layer, reading and writing one fp8 and one compute-dtype copy each).
The denoise stage repeats per step: its simulated calls are scaled to the real pipeline's calls per step (Wan
with CFG calls the transformer twice; the UNet pipelines once, on a batch of two) and by the context windows
of a long video. A tiled decode extrapolated from 2 and 3 latent frames is extrapolated in time the same way.
A decode in re-anchored windows (`long.decode_window`, vidrt.core.windows) is priced as one decoder call per
window on its latent frames, the anchor's re-decoded frame included; the anchor's one-frame encode per window is
not counted (a t2v session measures no encoder; it is a fraction of one window's decode).
"""
from __future__ import annotations

from dataclasses import dataclass

from vidrt.core.windows import render_decode_windows
from vidrt.memory.cost import Counts
from vidrt.memory.devices import GpuSpec
from vidrt.memory.settings import MemorySettings
from vidrt.memory.timemodel import Efficiency, predict_seconds
from vidrt.models.base import model_folder, strength_steps

# A desktop CPU's sustained matmul rate for a text encoder kept on the host (assumed, not fitted: 16 cores at
# ~60 GFLOP/s each with AVX2/AVX-512 in fp32).
HOST_FLOPS = 1.0e12
# A consumer NVMe SSD read through safetensors.load_file and pinned (assumed, not fitted: sequential reads of
# 2-7 GB/s on PCIe 3/4 drives, less the copy into pinned memory); writes of the offload files once per render.
DISK_READ_GBS = 2.0
DISK_WRITE_GBS = 1.0


@dataclass(frozen=True)
class RunShape:
    """How often the real run repeats what the session simulated once."""

    steps: int
    calls_per_step: int          # denoiser calls the pipeline makes per step
    windows: int = 1             # context windows per denoiser call (long videos)
    latent_frames: int = 1       # for decodes extrapolated from 2 and 3 latent frames
    text_calls: int = 1          # text encoder forwards (2 with classifier-free guidance)
    decodes: tuple[int, ...] = ()    # latent frames of each decoder call of a windowed decode (empty: one call)


def run_shape(config, adapter, frames: int, windows: int = 1, pipe=None) -> RunShape:
    """How the run `config` repeats one simulated step: its steps (video-to-video: the strength's share), the
    pipeline's denoiser calls per step, the context windows of a long video, the latent frames of its decode and
    the decode windows it runs in (the config's `long.decode_window`; auto: what the model declares, read from the
    folder `pipe` came from, else `model.path`), the text encoder's calls."""
    cfg = float(getattr(config, "guidance", 5.0)) > 1.0
    steps = int(getattr(config, "steps", 1) or 1)
    if getattr(config, "input_video", None):      # video-to-video runs the strength's share of the schedule
        steps = strength_steps(steps, float(config.strength))
    latent = adapter.latent_frames(frames)
    folder = model_folder(pipe) if pipe is not None else getattr(getattr(config, "model", None), "path", None)
    decode = render_decode_windows(adapter.spec, getattr(config, "long", None),
                                   adapter.spec.declared_decode_window(folder), latent)
    return RunShape(steps=steps, calls_per_step=adapter.denoiser_calls_per_step(cfg),
                    windows=windows, latent_frames=latent, text_calls=2 if cfg else 1,
                    decodes=tuple(decode.decoded_latents(latent)) if decode else ())


def _seconds(counts: Counts, device: GpuSpec, eff: Efficiency) -> float:
    return predict_seconds(counts, device, eff)["total"]["total"] if counts.sections() else 0.0


def _host_seconds(counts: Counts, eff: Efficiency) -> float:
    totals = counts.totals()
    flops = sum(totals[c]["flops"] for c in ("matmul", "attention"))
    nbytes = sum(totals[c]["bytes"] for c in ("matmul", "attention", "elementwise", "host"))
    return flops / HOST_FLOPS + nbytes / (eff.host_memory_gbs * 1e9)


def _with_streaming(counts: Counts, section: str, model: str, nbytes: float, copies: float,
                    serial: bool) -> Counts:
    """`counts` with `nbytes` streamed in `copies` copies during `section`: onto the model's repeated layers when
    the session counted them apart (their compute is what a side stream overlaps), else onto the section."""
    layers = f"{section}/layers:{model}"
    target = layers if layers in counts.sections() else section
    out = counts.scaled(1.0)
    out.add_transfer(target, nbytes, "h2d", copies)
    if serial:
        out.serial |= {s for s in out.sections() if s == section or s.startswith(section + "/")}
    return out


def _with_casting(counts: Counts, section: str, stored, calls: float) -> Counts:
    """`counts` with `calls` denoiser calls' layerwise casts: per cast layer an upcast (read fp8, write the
    compute dtype) and a recast (the reverse), each one element-wise op."""
    if not stored.cast_layers:
        return counts
    weights = stored.cast_bytes / stored.itemsize
    per_op = weights * (1 + stored.itemsize) / stored.cast_layers
    out = counts.scaled(1.0)
    out.add_op(section, "vidrt.layerwise_cast", "elementwise", 0, int(per_op), n=2 * stored.cast_layers * calls)
    return out


def price(sess, settings: MemorySettings, denoise: str, decode: str, shape: RunShape, device: GpuSpec,
          eff: Efficiency, denoiser: str) -> dict[str, float]:
    """Predicted seconds per stage (and "denoise_step", "total") of the run `sess` measured, with `settings`,
    whose denoise / decode variants are the sections `denoise` / `decode`. `denoiser`: its params key."""
    counts: Counts = sess.counts
    params = sess.params_for(settings.weights)
    out: dict[str, float] = {}
    streams = sess.stream_groups(settings.granularity)
    leaf = settings.offload == "group" and sess.leaf_level(denoiser, settings.granularity)

    text = counts.select("text_encode")
    if settings.text_encoder == "cpu":
        out["text_encode"] = _host_seconds(text, eff)
    else:
        if settings.offload == "group" and "text_encoder" in sess.params:
            text = _with_streaming(text, "text_encode", "text_encoder", sess.params["text_encoder"] * shape.text_calls,
                                   streams.get("text_encoder", 1) * shape.text_calls, serial=True)
        out["text_encode"] = _seconds(text, device, eff)
    for stage in ("image_encode", "video_encode"):
        if stage in counts.sections():
            out[stage] = _seconds(counts.select(stage), device, eff)

    simulated = max(1, sess.denoise_calls.get(denoise, 1))
    calls = shape.calls_per_step * shape.windows
    step = counts.select(denoise).scaled(calls / simulated)
    if settings.weights != "native" and sess.stored is not None:
        step = _with_casting(step, denoise, sess.stored, calls)
    if settings.offload == "group":
        step = _with_streaming(step, denoise, denoiser, params[denoiser] * calls,
                               streams.get(denoiser, 1) * calls, serial=leaf)
    elif settings.offload == "shard" and sess.shard:
        ranks_share = max(0, sess.params[denoiser] - sess.shard.get(denoiser, 0))
        step = _with_streaming(step, denoise, denoiser, ranks_share * calls, streams.get(denoiser, 1) * calls,
                               serial=False)
    out["denoise_step"] = _seconds(step, device, eff)
    if settings.offload == "group" and settings.disk:
        out["denoise_step"] += params[denoiser] * calls / (DISK_READ_GBS * 1e9)
        out["disk_write"] = params[denoiser] / (DISK_WRITE_GBS * 1e9)
    out["denoise"] = out["denoise_step"] * shape.steps

    calls = shape.decodes or (shape.latent_frames,)
    parts = [s for s in counts.sections() if s.split("/")[0].startswith(decode + "~")]
    if parts:   # extrapolated: t(n) = t(2) + (t(3) - t(2)) (n - 2), per decoder call
        t2 = _seconds(counts.select(f"{decode}~2"), device, eff)
        t3 = _seconds(counts.select(f"{decode}~3"), device, eff)
        out["vae_decode"] = sum(t2 + (t3 - t2) * max(0, n - 2) for n in calls)
    else:       # measured on the whole sequence: windows decode their latent frames at the same rate
        out["vae_decode"] = _seconds(counts.select(decode), device, eff) * sum(calls) / shape.latent_frames

    if settings.offload == "model":    # each model moves to the accelerator once, when its stage starts
        link = device.host_gbs * 1e9 * eff.eff_transfer
        for stage, models in (("text_encode", ("text_encoder",)), ("image_encode", ("image_encoder",)),
                              ("video_encode", ("vae",)), ("denoise", (denoiser,)), ("vae_decode", ("vae",))):
            moved = sum(params.get(m, 0) for m in models
                        if not (m == "text_encoder" and settings.text_encoder == "cpu"))
            if stage in out:
                out[stage] += moved / link
    out["total"] = sum(v for k, v in out.items() if k != "denoise_step")
    return out
