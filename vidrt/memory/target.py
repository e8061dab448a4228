"""What a plan is for: the accelerator a config targets, the GPU model its seconds are priced on, and what
`memory.budget: auto` means there."""
from __future__ import annotations

from vidrt.core.errors import VidrtError
from vidrt.core.units import GiB, parse_bytes
from vidrt.memory.devices import GpuSpec, device_from_torch, device_ids, get_device
from vidrt.models.loading import host_memory, process_resident_bytes

DEFAULT_GPU = "rtx4090"        # the GPU model plans are priced for when none is named or present
HEADROOM = (0.75 * GiB, 0.06)  # bytes kept free: the larger of a fixed amount and a share of the device
HOST_HEADROOM = (2 * GiB, 0.10)  # host memory left to the system and the page cache


def accelerator(config) -> str:
    """The device a config's run targets ("cuda" unless it asks for the CPU: dry runs budget for a GPU)."""
    devices = list(getattr(config, "devices", None) or ["auto"])
    first = str(devices[0])
    return "cpu" if first == "cpu" else (first if first.startswith("cuda") else "cuda")


def resolve_gpu(gpu: str | GpuSpec | None) -> GpuSpec:
    """The GPU model to price plans for: the one named, the one present, or DEFAULT_GPU."""
    if isinstance(gpu, GpuSpec):
        return gpu
    if gpu:
        try:
            return get_device(gpu)
        except KeyError:
            raise VidrtError(f"--gpu: unknown GPU {gpu!r}; known: {', '.join(device_ids())}") from None
    return device_from_torch() or get_device(DEFAULT_GPU)


def headroom(total_bytes: int) -> int:
    return int(max(HEADROOM[0], HEADROOM[1] * total_bytes))


def auto_budget(config, gpu: str | GpuSpec | None = None) -> int | None:
    """`memory.budget: auto`: the target accelerator's free memory less a headroom; a named GPU model's memory
    less the headroom when that GPU is not at hand; None (no device limit) for a CPU run."""
    target = accelerator(config)
    if target == "cpu":
        return None
    import torch

    if gpu is None and torch.cuda.is_available():
        index = int(target.split(":")[1]) if ":" in target else torch.cuda.current_device()
        free, total = torch.cuda.mem_get_info(index)
        return max(0, int(free) - headroom(int(total)))
    spec = resolve_gpu(gpu)
    total = int(spec.memory_gib * GiB)
    return total - headroom(total)


def auto_host_budget() -> int | None:
    """`memory.host_budget: auto`: the host memory this process may hold, i.e. what is free plus what it holds
    already (a loaded pipeline's weights are counted in the plan), less a headroom; None where unknown."""
    total, available = host_memory()
    if total is None:
        return None
    usable = total if available is None else min(total, available + process_resident_bytes())
    return max(0, usable - int(max(HOST_HEADROOM[0], HOST_HEADROOM[1] * total)))


def host_budget_bytes(config, host_budget=None) -> int | None:
    """The host bytes a plan may hold: `host_budget` if given, else the config's memory.host_budget (auto:
    auto_host_budget; null: no limit)."""
    value = host_budget if host_budget is not None else getattr(getattr(config, "memory", None), "host_budget", None)
    if value is None:
        return None
    if isinstance(value, str) and value.strip().lower() == "auto":
        return auto_host_budget()
    return parse_bytes(value, "memory.host_budget")
