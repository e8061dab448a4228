"""Peak rates of common GPUs, from the vendors' datasheets: what the time model divides counted work by.

Why: a plan's seconds are counted work (vidrt.memory.cost) over a device's peak rates times fitted
efficiencies (vidrt.memory.timemodel); the peaks must be the datasheet numbers, stated plainly.

Conventions (read before comparing with a spec sheet):
* Tensor TFLOPS are *dense* (NVIDIA's headline figures with an asterisk are 2:4 sparse: twice these).
* GeForce cards run FP16/BF16 tensor math at half rate when accumulating in FP32; PyTorch matmuls accumulate
  in FP32, so the GeForce rows give the *FP32-accumulate* dense rate (RTX 4090: 165.2, not 330.3). Data
  centre parts (A100, L4, L40S, H100, H200) have one rate for both.
* `fp32_tflops` is the non-tensor FP32 (CUDA core) rate: PyTorch's default for float32 matmuls (no TF32).
* `mem_gbs` is the DRAM bandwidth in GB/s (10^9 bytes/s).
* `host_gbs` is the host link, one direction, nominal: PCIe gen x lanes with 128b/130b coding
  (gen3 8 GT/s, gen4 16, gen5 32 per lane): gen4 x16 = 31.5 GB/s, gen5 x16 = 63.0 GB/s. SXM parts (H100,
  H200, A100 SXM4) reach the host over PCIe (gen5 x16 / gen4 x16); NVLink is GPU to GPU.
* `memory_gib` is the marketed size as named (24 GB on an RTX 4090 is 24 GiB; the H200's 141 GB shows as
  about 140 GiB usable in nvidia-smi).
"""
from __future__ import annotations

from dataclasses import dataclass

PCIE_GTS = {3: 8.0, 4: 16.0, 5: 32.0}


def pcie_gbs(gen: int, lanes: int) -> float:
    """Nominal one-direction PCIe bandwidth in GB/s: GT/s x lanes x 128/130 / 8 bits."""
    return round(PCIE_GTS[gen] * lanes * 128 / 130 / 8, 2)


@dataclass(frozen=True)
class GpuSpec:
    id: str
    name: str
    bf16_tflops: float      # dense tensor BF16 (FP32 accumulate)
    fp16_tflops: float      # dense tensor FP16 with FP32 accumulate
    fp32_tflops: float      # non-tensor FP32
    mem_gbs: float          # DRAM bandwidth, GB/s
    pcie_gen: int
    pcie_lanes: int
    memory_gib: float
    source: str
    aliases: tuple[str, ...] = ()

    @property
    def host_gbs(self) -> float:
        return pcie_gbs(self.pcie_gen, self.pcie_lanes)

    def peak_flops(self, dtype: str) -> float:
        """Peak FLOP/s for a matmul in `dtype` ("bfloat16", "float16", "float32", ...)."""
        d = str(dtype).replace("torch.", "")
        tf = {"bfloat16": self.bf16_tflops, "float16": self.fp16_tflops}.get(d, self.fp32_tflops)
        return tf * 1e12


_AMPERE_GA = "NVIDIA Ampere GA102 architecture whitepaper (GeForce: FP16 w/ FP32 acc = 1/2 of FP16 acc)"
_ADA = "NVIDIA Ada Lovelace architecture whitepaper, appendix (Peak FP16 Tensor TFLOPS with FP32 Accumulate)"

GPUS: tuple[GpuSpec, ...] = (
    # GeForce: 112 tensor cores x 1.777 GHz x 128 flop/clk (FP32 acc); 360 GB/s = 192-bit x 15 Gbps
    GpuSpec("rtx3060", "NVIDIA GeForce RTX 3060 12GB", 25.5, 25.5, 12.74, 360.0, 4, 16, 12,
            f"RTX 3060 spec page + {_AMPERE_GA}", ("3060", "rtx-3060", "geforce-rtx-3060")),
    # 136 TC x 2.535 GHz x 128; 288 GB/s = 128-bit x 18 Gbps; the card is wired PCIe 4.0 x8
    GpuSpec("rtx4060ti", "NVIDIA GeForce RTX 4060 Ti 16GB", 44.1, 44.1, 22.06, 288.0, 4, 8, 16,
            f"RTX 4060 Ti spec page + {_ADA}", ("4060ti", "rtx-4060-ti", "rtx4060ti-16g")),
    # 184 TC x 2.475 GHz x 128; 504 GB/s = 192-bit x 21 Gbps
    GpuSpec("rtx4070", "NVIDIA GeForce RTX 4070 12GB", 58.3, 58.3, 29.15, 504.0, 4, 16, 12,
            f"RTX 4070 spec page + {_ADA}", ("4070", "rtx-4070")),
    # 304 TC x 2.505 GHz x 128; 716.8 GB/s = 256-bit x 22.4 Gbps
    GpuSpec("rtx4080", "NVIDIA GeForce RTX 4080 16GB", 97.5, 97.5, 48.74, 716.8, 4, 16, 16,
            _ADA, ("4080", "rtx-4080")),
    # 512 TC x 2.52 GHz x 128 = 165.2 (330.3 with FP16 accumulate); 1008 GB/s = 384-bit x 21 Gbps
    GpuSpec("rtx4090", "NVIDIA GeForce RTX 4090 24GB", 165.2, 165.2, 82.58, 1008.0, 4, 16, 24,
            _ADA, ("4090", "rtx-4090")),
    # 680 TC x 2.407 GHz x 128 = 209.5 (419 with FP16 accumulate, 838 sparse); 1792 GB/s = 512-bit x 28 Gbps
    GpuSpec("rtx5090", "NVIDIA GeForce RTX 5090 32GB", 209.5, 209.5, 104.8, 1792.0, 5, 16, 32,
            "NVIDIA RTX Blackwell GPU architecture whitepaper (FP16/BF16 tensor, FP32 accumulate, dense)",
            ("5090", "rtx-5090")),
    GpuSpec("a100-40g", "NVIDIA A100 40GB (SXM4)", 312.0, 312.0, 19.5, 1555.0, 4, 16, 40,
            "NVIDIA A100 Tensor Core GPU datasheet (BF16/FP16 312 dense, 624 sparse; 1,555 GB/s)",
            ("a100", "a100-40gb", "a100-sxm4-40gb")),
    GpuSpec("a100-80g", "NVIDIA A100 80GB (SXM4)", 312.0, 312.0, 19.5, 2039.0, 4, 16, 80,
            "NVIDIA A100 Tensor Core GPU datasheet (80GB SXM: 2,039 GB/s; PCIe card: 1,935 GB/s)",
            ("a100-80gb", "a100-sxm4-80gb")),
    GpuSpec("l4", "NVIDIA L4 24GB", 121.0, 121.0, 30.3, 300.0, 4, 16, 24,
            "NVIDIA L4 Tensor Core GPU datasheet (BF16/FP16 242 TFLOPS with sparsity -> 121 dense)",
            ("nvidia-l4",)),
    GpuSpec("l40s", "NVIDIA L40S 48GB", 362.05, 362.05, 91.6, 864.0, 4, 16, 48,
            "NVIDIA L40S datasheet (BF16/FP16 362.05 dense, 733 sparse; 864 GB/s)",
            ("nvidia-l40s",)),
    GpuSpec("h100", "NVIDIA H100 80GB SXM5", 989.4, 989.4, 66.9, 3350.0, 5, 16, 80,
            "NVIDIA H100 Tensor Core GPU datasheet, SXM (BF16/FP16 1,979 sparse -> 989.4 dense; 3.35 TB/s)",
            ("h100-sxm", "h100-80g", "h100-sxm5")),
    GpuSpec("h200", "NVIDIA H200 141GB SXM", 989.4, 989.4, 66.9, 4800.0, 5, 16, 141,
            "NVIDIA H200 Tensor Core GPU datasheet, SXM (BF16/FP16 1,979 sparse -> 989.4 dense; 4.8 TB/s)",
            ("h200-sxm", "h200-141g")),
)

_BY_ID = {g.id: g for g in GPUS}
_ALIASES = {a: g.id for g in GPUS for a in (g.id, *g.aliases)}


def get_device(key: str) -> GpuSpec:
    """A GpuSpec by short id or alias (case-insensitive: "rtx4090", "4090", "h100", "a100-80g", ...)."""
    k = str(key).strip().lower().replace("_", "-").replace(" ", "-")
    if k in _ALIASES:
        return _BY_ID[_ALIASES[k]]
    raise KeyError(f"unknown GPU {key!r}; known: {', '.join(g.id for g in GPUS)}")


def device_ids() -> list[str]:
    return [g.id for g in GPUS]


# (substring of the lower-cased torch name, words that must be absent, id); first match wins
_NAME_RULES = (
    ("h200", ("nvl", "gh200"), "h200"),
    ("h100", ("pcie", "nvl", "gh200"), "h100"),
    ("a100", (), "a100"),              # 80 GB when the name says so ("A100-SXM4-80GB", "A100 80GB PCIe")
    ("l40s", (), "l40s"),
    ("rtx 5090", (), "rtx5090"),
    ("rtx 4090", (), "rtx4090"),
    ("rtx 4080", ("super",), "rtx4080"),
    ("rtx 4070", ("super", " ti"), "rtx4070"),
    ("rtx 4060 ti", (), "rtx4060ti"),
    ("rtx 3060", (" ti",), "rtx3060"),
)


def match_device_name(name: str) -> GpuSpec | None:
    """The row for a `torch.cuda.get_device_name()` string, or None when the table has no such part (H100
    PCIe / NVL, GH200, RTX 3060 Ti, SUPER cards, laptop parts). A100 PCIe cards get the SXM4 row of their
    size (same TFLOPS; the 80 GB PCIe card has 1,935 GB/s, not 2,039); the RTX 4060 Ti 8GB has the 16GB
    card's name and rates."""
    n = name.lower()
    if n.strip() in ("nvidia l4", "l4"):
        return _BY_ID["l4"]
    for needle, absent, gid in _NAME_RULES:
        if needle in n and "laptop" not in n and not any(a in n for a in absent):
            if gid == "a100":
                gid = "a100-80g" if "80gb" in n else "a100-40g"
            return _BY_ID[gid]
    return None


def device_from_torch(index: int | None = None) -> GpuSpec | None:
    """The current CUDA device's row; None on a CPU-only machine or for a GPU the table does not know."""
    import torch

    if not torch.cuda.is_available():
        return None
    return match_device_name(torch.cuda.get_device_name(index))
