"""Single-file denoiser weights (`model.weights`): one GGUF or safetensors file holding the denoiser, as Wan2GP,
ComfyUI and the quantizing repositories ship it, used with the configs (and every other component) of the
pipeline folder or hub id in `model.path`.

* `.gguf`: block-quantized weights (Q8_0, Q5_K, Q4_K, ...), loaded by diffusers' GGUF quantizer: the linear
  layers keep their quantized bytes and dequantize to the model's dtype on every call (one layer at a time);
  what the file stores in float stays float.
* `.safetensors`: a full-precision single file, in the original (Wan's own) or the diffusers layout.
Either layout of names loads: diffusers converts original names with the class's own mapping
(`from_single_file`). `read_single_file` reads only the header (names, shapes, stored bytes), so the checks
before loading and the memory simulator count the file's true bytes without loading it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vidrt.core.errors import VidrtError
from vidrt.core.files import parsed_once

SUFFIXES = {".gguf": "gguf", ".safetensors": "safetensors"}
# GGUF types stored as plain floats: loaded as ordinary tensors (the rest are block-quantized)
GGUF_FLOAT_TYPES = ("F32", "F16", "BF16", "F64")


@dataclass(frozen=True)
class FileTensor:
    shape: tuple[int, ...]
    nbytes: int          # bytes stored in the file (quantized blocks for GGUF)
    quantized: bool      # block-quantized: dequantized to the compute dtype on every call


@dataclass(frozen=True)
class SingleFile:
    path: Path
    kind: str                            # "gguf" | "safetensors"
    tensors: dict[str, FileTensor]       # by the file's own names
    quant_types: tuple[str, ...]         # GGUF types present, most bytes first; () for safetensors

    @property
    def total_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors.values())

    def describe(self) -> str:
        kinds = "/".join(self.quant_types) if self.quant_types else "safetensors"
        return f"{self.path.name} ({kinds}, {self.total_bytes / 2 ** 30:.2f} GiB)"


def single_file_kind(path: str | Path, key: str = "model.weights") -> str:
    kind = SUFFIXES.get(Path(path).suffix.lower())
    if kind is None:
        raise VidrtError(f"{key}: {path} is neither a .gguf nor a .safetensors file")
    return kind


def read_single_file(path: str | Path, key: str = "model.weights") -> SingleFile:
    """The file's tensors from its header alone; a missing, unreadable or corrupt file is one line."""
    path = Path(path).expanduser()
    kind = single_file_kind(path, key)
    if not path.is_file():
        raise VidrtError(f"{key}: no such file {path}")
    try:
        tensors, types = _read_header(path)
    except VidrtError:
        raise
    except Exception as exc:     # truncated files, foreign formats: many exception types
        raise VidrtError(f"{key}: {path} is not a readable {kind} file ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else 'no detail'})") from None
    if not tensors:
        raise VidrtError(f"{key}: {path} holds no tensors")
    return SingleFile(path, kind, dict(tensors), types)


def _parse_header(path: Path):
    return _read_gguf(path) if SUFFIXES[path.suffix.lower()] == "gguf" else (_read_safetensors(path), ())


# one parse per render: the checks, the memory simulator and the loader each read the header (a 14B GGUF's
# lists ~1000 tensors)
_read_header = parsed_once(_parse_header, maxsize=4)


def _read_gguf(path: Path):
    try:
        import gguf
    except ImportError:
        raise VidrtError("model.weights: GGUF files need the `gguf` package: pip install 'vidrt[gguf]'") from None
    reader = gguf.GGUFReader(str(path))
    tensors, by_type = {}, {}
    for t in reader.tensors:
        name = t.tensor_type.name
        # GGUF lists dimensions fastest-first; torch's order is the reverse
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))
        tensors[t.name] = FileTensor(shape, int(t.n_bytes), name not in GGUF_FLOAT_TYPES)
        by_type[name] = by_type.get(name, 0) + int(t.n_bytes)
    return tensors, tuple(sorted(by_type, key=by_type.get, reverse=True))


def _read_safetensors(path: Path) -> dict[str, FileTensor]:
    from safetensors import safe_open

    sizes = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "I64": 8, "I32": 4, "I16": 2,
             "I8": 1, "U8": 1, "BOOL": 1}
    out = {}
    with safe_open(str(path), framework="pt") as f:
        for name in f.keys():
            sl = f.get_slice(name)
            shape = tuple(int(d) for d in sl.get_shape())
            n = 1
            for d in shape:
                n *= d
            out[name] = FileTensor(shape, n * sizes.get(sl.get_dtype(), 4), False)
    return out


def loadable_class_name(cls) -> str | None:
    """The diffusers single-file mapping `cls` loads through (None: the class has no single-file loader)."""
    from diffusers.loaders.single_file_model import SINGLE_FILE_LOADABLE_CLASSES

    for name in SINGLE_FILE_LOADABLE_CLASSES:
        import diffusers

        loadable = getattr(diffusers, name, None)
        if loadable is not None and isinstance(cls, type) and issubclass(cls, loadable):
            return name
    return None


def diffusers_names(file: SingleFile, cls, model_names: set[str] | None = None) -> dict[str, FileTensor]:
    """The file's tensors by the names `cls` gives them, converted as diffusers' `from_single_file` converts them
    (original names through the class's mapping; a file that has every name of `model_names`, the diffusers
    layout, as it is)."""
    import torch
    from diffusers.loaders.single_file_model import SINGLE_FILE_LOADABLE_CLASSES

    if model_names is not None and model_names <= set(file.tensors):   # (a reduced model has fewer blocks)
        return dict(file.tensors)
    mapping = SINGLE_FILE_LOADABLE_CLASSES[loadable_class_name(cls)]["checkpoint_mapping_fn"]
    stand_ins = {n: torch.empty(t.shape, device="meta") for n, t in file.tensors.items()}
    info = {id(v): file.tensors[n] for n, v in stand_ins.items()}
    converted = mapping(config=None, checkpoint=dict(stand_ins))
    out = {}
    for name, value in converted.items():
        known = info.get(id(value))
        if known is None:        # a tensor the mapping split: its share of the bytes of what it came from
            known = FileTensor(tuple(value.shape), value.numel() * 2, False)
        out[name] = known
    return out


def load_denoiser(cls, file: SingleFile, config: str, subfolder: str, dtype, family: str,
                  key: str = "model.weights"):
    """`cls.from_single_file` with the folder's (or hub id's) config for `subfolder`; GGUF through diffusers' GGUF
    quantizer, computing in `dtype`. `key`: the config key that named the file (errors say it)."""
    if loadable_class_name(cls) is None:
        raise VidrtError(f"{key}: the {family} family's {cls.__name__} has no single-file loader in "
                         "diffusers; use a pipeline folder")
    kwargs = {}
    if file.kind == "gguf":
        from diffusers import GGUFQuantizationConfig

        kwargs["quantization_config"] = GGUFQuantizationConfig(compute_dtype=dtype)
    try:
        return cls.from_single_file(str(file.path), config=str(config), subfolder=subfolder, dtype=dtype,
                                    **kwargs)
    except VidrtError:
        raise
    except Exception as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise VidrtError(f"{key}: cannot load {file.path.name} as the {family} {cls.__name__} of "
                         f"{config}/{subfolder}: {type(exc).__name__}: {reason}") from None
