"""Single-file denoiser checkpoints for the tests: what Wan2GP / ComfyUI users download, made from a tiny model.

`original_wan_names` turns a diffusers `WanTransformer3DModel` state dict into the names of Wan's own checkpoints
(the layout city96's GGUF files and the repackaged single files use); diffusers' `from_single_file` converts
them back (tests check the round trip through diffusers' own converter). `write_gguf` quantizes the 2-D
weights whose rows split into whole blocks with the `gguf` package, as the quantizing repositories do, and
keeps everything else in F32.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

# diffusers -> Wan names, applied in order (the inverse of diffusers' convert_wan_transformer_to_diffusers)
_TO_ORIGINAL = (
    ("condition_embedder.time_embedder.linear_1", "time_embedding.0"),
    ("condition_embedder.time_embedder.linear_2", "time_embedding.2"),
    ("condition_embedder.text_embedder.linear_1", "text_embedding.0"),
    ("condition_embedder.text_embedder.linear_2", "text_embedding.2"),
    ("condition_embedder.time_proj", "time_projection.1"),
    ("condition_embedder.image_embedder.norm1", "img_emb.proj.0"),
    ("condition_embedder.image_embedder.ff.net.0.proj", "img_emb.proj.1"),
    ("condition_embedder.image_embedder.ff.net.2", "img_emb.proj.3"),
    ("condition_embedder.image_embedder.norm2", "img_emb.proj.4"),
    ("attn2", "cross_attn"), ("attn1", "self_attn"),
    (".to_out.0.", ".o."), (".to_q.", ".q."), (".to_k.", ".k."), (".to_v.", ".v."),
    (".add_k_proj.", ".k_img."), (".add_v_proj.", ".v_img."), (".norm_added_k.", ".norm_k_img."),
    ("ffn.net.0.proj", "ffn.0"), ("ffn.net.2", "ffn.2"),
    ("norm2", "norm__swap"), ("norm3", "norm2"), ("norm__swap", "norm3"),
)


def original_wan_name(name: str) -> str:
    if name == "scale_shift_table":
        return "head.modulation"
    if name.startswith("proj_out."):
        return "head.head." + name[len("proj_out."):]
    name = re.sub(r"^(blocks\.\d+\.)scale_shift_table$", r"\1modulation", name)
    for a, b in _TO_ORIGINAL:
        name = name.replace(a, b)
    return name


def original_wan_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {original_wan_name(k): v for k, v in state.items()}


def write_gguf(state: dict[str, torch.Tensor], path: str | Path, quant: str = "Q8_0") -> dict[str, str]:
    """`state` (any names) as a GGUF file: 2-D `.weight` tensors whose rows are whole blocks of `quant`, in
    `quant`; the rest in F32. Returns each tensor's stored type."""
    import gguf

    qtype = gguf.GGMLQuantizationType[quant]
    block = gguf.GGML_QUANT_SIZES[qtype][0]
    writer = gguf.GGUFWriter(str(path), arch="wan")
    types = {}
    for name, tensor in state.items():
        array = tensor.detach().float().cpu().numpy()
        if name.endswith(".weight") and array.ndim == 2 and array.shape[1] % block == 0:
            data = gguf.quants.quantize(array, qtype)
            writer.add_tensor(name, data, raw_shape=data.shape, raw_dtype=qtype)
            types[name] = quant
        else:
            writer.add_tensor(name, array.astype(np.float32))
            types[name] = "F32"
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return types


def write_safetensors(state: dict[str, torch.Tensor], path: str | Path) -> None:
    from safetensors.torch import save_file

    save_file({k: v.detach().contiguous() for k, v in state.items()}, str(path))
