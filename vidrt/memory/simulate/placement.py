"""Where a simulated run's parameters live, stage by stage: on the accelerator or on the host.

The session measures each stage's tensors once; placing the weights is arithmetic on top, so the planner can
weigh every offload and text-encoder setting against one session.
"""
from __future__ import annotations

from torch import nn

from vidrt.core.errors import VidrtError
from vidrt.core.tensors import module_bytes
from vidrt.engine.offload import offload_granularity
from vidrt.memory.settings import MemorySettings
from vidrt.models.layout import stream_units

ENCODERS = ("text_encoder", "image_encoder")


def account(raw: list[dict], params: dict[str, int], group: dict[str, int], s: MemorySettings,
            device: str = "cuda", shard: dict[str, int] | None = None):
    """Place parameters and each stage's tensors on the accelerator or the host, the way the runner does:

    * offload none: every model on the accelerator; the text encoder leaves it after encoding (the runner's
      release_text_encoder; not on a CPU-only run, where there is nowhere to move it);
    * offload model: only the running stage's models are on the accelerator (diffusers model offload);
    * offload group: the denoiser streams block by block and the encoders leaf by leaf (resident: what is
      outside the blocks + two blocks / the two largest leaves); the VAE stays on the accelerator;
    * offload shard (several ranks): like none, with the denoiser's weights sharded over the ranks (`shard`:
      per-rank bytes, 1/N plus the running and the prefetched block);
    * offload group from disk (`s.disk`): the denoiser's weights live in files; the host holds only the copies
      in flight (as many bytes as the accelerator's resident share); the encoders stream from host memory
      (vidrt.engine.offload: tied weights break diffusers' disk path);
    * text encoder on the CPU: it never touches the accelerator; its forward runs on the host.
    `raw`: the session's stages, each with the `models` that run in it. Host bytes: weights kept in host
    memory (offloaded or released) plus a CPU text encoder's tensors. (What loading the pipeline takes before
    the plan applies is not counted: diffusers' from_pretrained holds each model in host memory once.)"""
    stages = []
    peak = 0
    host_peak = 0
    te_host = s.text_encoder == "cpu"
    release_te = device != "cpu"
    for r in raw:
        name = r["name"]
        names = list(r.get("models", ()))
        on_host = name == "text_encode" and te_host
        on_accel: dict[str, int] = {}
        if s.offload in ("none", "shard"):
            if s.offload == "shard" and not shard:
                raise VidrtError("memory.offload: shard splits the weights over several GPUs; give the number "
                                 "of GPUs (--gpus N) or choose none, model or group")
            for n, b in params.items():
                if n == "text_encoder" and (te_host or (release_te and name != "text_encode")):
                    continue
                on_accel[n] = (shard or {}).get(n, b) if s.offload == "shard" else b
        elif s.offload == "model":
            on_accel = {n: params[n] for n in names if not (n == "text_encoder" and te_host)}
        else:  # group
            on_accel = {n: group.get(n, params[n]) for n in names if not (n == "text_encoder" and te_host)}
            if "vae" in params:
                on_accel["vae"] = params["vae"]
        resident = sum(on_accel.values())
        tensors = r["input_bytes"] + r["activation_bytes"]
        accel = resident + (0 if on_host else tensors)
        if s.offload == "group" and s.disk:   # the denoiser from files: only its copies in flight pass the host
            host = sum(b for n, b in params.items() if n in ENCODERS) + \
                sum(group.get(n, params[n]) for n in names if n not in ENCODERS and n != "vae")
        elif s.offload == "group":  # streamed weights live on the host; the accelerator holds copies
            host = sum(b for n, b in params.items() if n != "vae")
        else:
            host = sum(b for n, b in params.items() if n not in on_accel)
        if device == "cpu":
            host = 0
        if on_host:
            host += tensors
        stages.append({"name": name, "device": "cpu" if on_host else "accelerator",
                       "peak_bytes": int(accel), "param_bytes": int(resident),
                       "stage_param_bytes": int(sum(params[n] for n in names)),
                       "input_bytes": int(r["input_bytes"]), "activation_bytes": int(r["activation_bytes"]),
                       "host_bytes": int(max(0, host)), "seconds": round(r["seconds"], 4),
                       **({"extrapolated": True} if r.get("extrapolated") else {})})
        peak = max(peak, accel)
        host_peak = max(host_peak, host)
    return stages, int(peak), int(max(0, host_peak))


GRANULARITIES = ("auto", "block", "leaf")


def _level(mod: nn.Module, total_bytes: int, granularity: str) -> str:
    return offload_granularity(mod, total_bytes) if granularity == "auto" else f"{granularity}_level"


def resident_under_group_offload(named: dict[str, nn.Module], params: dict[str, int],
                                 granularity: str = "auto") -> dict[str, int]:
    """Accelerator bytes of each model under group offloading: the encoders leaf by leaf, the VAE whole,
    the denoiser block by block or leaf by leaf (`granularity`)."""
    return {k: (leaf_resident(v) if k in ENCODERS else params[k] if k == "vae" else
                group_resident(v, params[k], granularity))
            for k, v in named.items()}


def group_resident(mod: nn.Module, total_bytes: int, granularity: str = "auto") -> int:
    """Resident bytes of a denoiser under vidrt's group offloading (vidrt.engine.offload): block level keeps what
    is outside the outermost blocks plus two blocks (the one running and the one being prefetched); leaf
    level keeps two leaves. `total_bytes` counts the layers a reduced simulation model dropped."""
    if _level(mod, total_bytes, granularity) == "leaf_level" or not stream_units(mod):
        return leaf_resident(mod)
    sizes = sorted((module_bytes([b]) for b in stream_units(mod)), reverse=True)
    return module_bytes([mod]) - sum(sizes) + sum(sizes[:2])


def leaf_resident(mod: nn.Module) -> int:
    """Resident bytes under leaf-level group offloading: the two largest leaves (one running, one
    prefetched)."""
    leaves = sorted((m for m in mod.modules() if not list(m.children())), key=lambda m: -module_bytes([m]))
    seen: set[int] = set()
    picked: list[int] = []
    for leaf in leaves:  # tied weights (UMT5's shared / embed_tokens) count once
        b = module_bytes([leaf], seen=seen)
        if b:
            picked.append(b)
        if len(picked) == 2:
            break
    return sum(picked)


def stream_groups_under_group_offload(named: dict[str, nn.Module], params: dict[str, int],
                                      repeated: dict[str, tuple[list, int]], granularity: str = "auto"
                                      ) -> dict[str, int]:
    """How many separate copies stream one call's weights under group offloading, per model (the VAE stays):
    one per block at block level, one per weighted leaf at leaf level; layers a reduced model left out count."""
    out = {}
    for k, mod in named.items():
        if k == "vae":
            continue
        layers, full = repeated.get(k, ((), 0))
        scale = full / len(layers) if layers else 1.0
        if k not in ENCODERS and stream_units(mod) and _level(mod, params[k], granularity) == "block_level":
            units = stream_units(mod)
            out[k] = int(round(len(units) * scale)) + 1       # + the module's own weights outside the blocks
        else:
            leaves = [m for m in mod.modules() if not list(m.children()) and next(m.parameters(), None) is not None]
            in_layers = sum(1 for layer in layers for m in layer.modules()
                            if not list(m.children()) and next(m.parameters(), None) is not None)
            out[k] = int(round(len(leaves) - in_layers + in_layers * scale))
    return out
