"""Checks before `from_pretrained` (no torch): is the path a pipeline folder of this family or a hub id that can
load, are its weights safe to load, does the request fit the folder (image or not, steps) and the host's memory;
what identifies its weights (for checkpoints); and hub errors in words."""
from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import struct
from pathlib import Path

from vidrt.core.errors import VidrtError
from vidrt.core.files import parsed_once
from vidrt.models.specs import FamilySpec, family_of_class

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
WEIGHT_SUFFIXES = (".safetensors", *PICKLE_SUFFIXES)


def looks_like_hub_id(path: str) -> bool:
    """`org/name` with no local folder `org/` — anything else that does not exist is a missing folder."""
    parts = path.split("/")
    return (len(parts) == 2 and all(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", p) for p in parts)
            and not Path(parts[0]).exists())


def local_or_hub(value: str, key: str, places: str = "", index_file: str = "model_index.json",
                 kind: str | None = None) -> Path | None:
    """The local folder `value` names, or None for a hub id that may load (refused here when it cannot: offline
    and not cached). `places` says where a relative path was looked for; with `kind`, a local folder must hold
    `index_file` (a diffusers folder of that kind)."""
    path = Path(value).expanduser()
    if path.exists():
        if not path.is_dir():
            raise VidrtError(f"{key}: {path} is a file, not a folder")
        if kind is not None and not (path / index_file).is_file():
            raise VidrtError(f"{key}: {path} has no {index_file} (not a diffusers {kind} folder)")
        return path
    if not looks_like_hub_id(value):
        raise VidrtError(f"{key}: no such folder {value}{places}")
    if hub_offline() and not hub_cached(value, index_file):
        raise VidrtError(f"{key}: {value} is not a folder{places}, and as a Hugging Face hub id it is not in "
                         "the local cache (HF_HUB_OFFLINE is set)")
    return None


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def hub_failure(exc: BaseException) -> str:
    """Why a hub download failed, in words (diffusers' messages point to a stack trace vidrt does not show):
    read from the exception and the ones it was raised from."""
    chain, seen = [], set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        chain.append(e)
        e = e.__cause__ or e.__context__
    names = {type(e).__name__ for e in chain}
    text = " ".join(" ".join(str(e).split()) for e in chain).lower()
    if hub_offline() or "OfflineModeIsEnabled" in names:
        return "it is not in the local Hugging Face cache and HF_HUB_OFFLINE is set"
    if names & {"ConnectError", "ConnectionError", "ConnectTimeout", "gaierror", "LocalEntryNotFoundError"} \
            or "couldn't connect" in text:
        return "huggingface.co could not be reached (no network?) and it is not in the local Hugging Face cache"
    if names & {"RepositoryNotFoundError", "GatedRepoError"} or "401" in text or "404" in text:
        return "no such model on the Hugging Face hub (or it is private or gated: log in with `hf auth login`)"
    return " ".join(str(exc).split()).split(". ")[0][:200]


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def hub_cached(repo_id: str, filename: str) -> bool:
    """Whether the local Hugging Face cache holds `filename` of `repo_id` (no network)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover
        return False
    try:
        return isinstance(try_to_load_from_cache(repo_id, filename), str)
    except Exception:   # invalid ids and the like
        return False


def read_json(path: Path, key: str) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise VidrtError(f"{key}: cannot read {path} ({exc})") from None
    except json.JSONDecodeError as exc:
        raise VidrtError(f"{key}: {path} is not valid JSON ({exc.msg})") from None
    if not isinstance(data, dict):
        raise VidrtError(f"{key}: {path} does not hold a JSON object")
    return data


def denoiser_channels(folder: Path, component: str) -> tuple[int, int] | None:
    """(in_channels, out_channels) of a pipeline folder's denoiser, from its config.json (None when absent)."""
    config = folder / component / "config.json"
    if not config.is_file():
        return None
    data = read_json(config, "model.path")
    cin, cout = data.get("in_channels"), data.get("out_channels")
    return (cin, cout) if isinstance(cin, int) and isinstance(cout, int) else None


def pixels_per_token(folder: Path, spec: FamilySpec) -> int | None:
    """Pixels per denoiser token along height and width: the VAE's spatial compression times the denoiser's
    spatial patch (Wan 2.1: 8 x 2 = 16; Wan 2.2 TI2V: 16 x 2 = 32); None without both configs."""
    vae, den = folder / "vae" / "config.json", folder / spec.denoiser_folder / "config.json"
    if not (vae.is_file() and den.is_file()):
        return None
    return pixels_per_token_of(read_json(vae, "model.path"), read_json(den, "model.path"))


def pixels_per_token_of(vae_config, den_config) -> int | None:
    """`pixels_per_token` from the two configs (dicts or config objects)."""
    get = lambda c, k: c.get(k) if isinstance(c, dict) else getattr(c, k, None)  # noqa: E731
    factor, patch = get(vae_config, "scale_factor_spatial"), get(den_config, "patch_size")
    if not isinstance(factor, int) or not isinstance(patch, (list, tuple)) or len(patch) != 3:
        return None
    return factor * int(patch[1])


def train_timesteps(folder: Path) -> int | None:
    """The scheduler's number of training timesteps (the most inference steps it can take)."""
    config = folder / "scheduler" / "scheduler_config.json"
    if not config.is_file():
        return None
    value = read_json(config, "model.path").get("num_train_timesteps")
    return value if isinstance(value, int) and value > 0 else None


def weight_files(folder: Path) -> list[Path]:
    """The weight files of a pipeline (or component) folder and of its component folders (two levels down)."""
    found = []
    for root, dirs, files in os.walk(folder):
        depth = len(Path(root).relative_to(folder).parts)
        dirs[:] = [] if depth >= 2 else sorted(d for d in dirs if not d.startswith("."))
        found += [Path(root) / f for f in sorted(files) if f.endswith(WEIGHT_SUFFIXES)]
    return found


def _safetensors_header(path: Path) -> bytes:
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            return head
        (size,) = struct.unpack("<Q", head)
        return fh.read(min(size, 100 * 2 ** 20))


def weights_identity(path: str | Path) -> dict[str, str] | None:
    """What identifies a local model folder's weights without reading them: per weight file, its size and (for
    safetensors) a hash of its header, which lists every tensor's name, dtype, shape and offsets. None for a
    path that is not a local folder (a hub id: its path is all there is)."""
    folder = Path(path)
    if not folder.is_dir():
        return None
    ident = {}
    for file in weight_files(folder):
        try:
            size = file.stat().st_size
            digest = (hashlib.sha256(_safetensors_header(file)).hexdigest()[:16]
                      if file.suffix == ".safetensors" else "-")
        except OSError:
            size, digest = -1, "unreadable"
        ident[file.relative_to(folder).as_posix()] = f"{size}:{digest}"
    return ident


def single_file_identity(path: str | Path) -> str:
    """What identifies a single weights file (model.weights) without reading its tensors: its size and a hash of
    its header (safetensors) or of its first 4 MiB (GGUF: its metadata and tensor list come first)."""
    file = Path(path).expanduser()
    try:
        size = file.stat().st_size
        if file.suffix.lower() == ".safetensors":
            head = _safetensors_header(file)
        else:
            with open(file, "rb") as fh:
                head = fh.read(4 * 2 ** 20)
    except OSError:
        return "unreadable"
    return f"{size}:{hashlib.sha256(head).hexdigest()[:16]}"


def _parse_index(index: Path) -> dict:
    try:
        return json.loads(index.read_text())
    except json.JSONDecodeError as exc:
        raise VidrtError(f"model.path: {index} is not valid JSON ({exc.msg})") from None


_read_index = parsed_once(_parse_index)   # the checks (family, experts) and the simulator read it for one render


def read_index(folder: Path) -> dict:
    """model_index.json of a pipeline folder (one clear error when the folder is not one); a copy of one parse
    per version of the file."""
    index = folder / "model_index.json"
    if not folder.is_dir():
        raise VidrtError(f"model.path: {folder} is not a folder")
    if not index.is_file():
        raise VidrtError(f"model.path: {folder} has no model_index.json (not a diffusers pipeline folder)")
    return copy.deepcopy(_read_index(index))


def refuse_pickle_only(folder: Path) -> None:
    """Pickle weights run code when loaded: refuse a component folder that has nothing else."""
    for sub in folder.iterdir():
        if not sub.is_dir():
            continue
        pickles = [p for p in sub.iterdir() if p.suffix in PICKLE_SUFFIXES]
        tensors = [p for p in sub.iterdir() if p.suffix == ".safetensors"]
        if pickles and not tensors:
            raise VidrtError(
                f"model.allow_pickle: {sub} has only pickle weights ({pickles[0].name}); "
                "convert to safetensors or set model.allow_pickle: true if you trust the file"
            )


def check_family_folder(folder: Path, spec: FamilySpec, *, allow_pickle: bool) -> dict:
    """Refuse a folder that is not a pipeline of this family, or whose weights are pickle-only; return its
    model_index.json."""
    index = read_index(folder)
    class_name = index.get("_class_name", "")
    if class_name not in spec.pipeline_class_names:
        other = family_of_class(class_name)
        hint = f"a {other!r} pipeline" if other else f"a {class_name or 'unknown'} pipeline"
        raise VidrtError(f"model.family: {folder} holds {hint}, not {spec.family!r}")
    if not allow_pickle:
        refuse_pickle_only(folder)
    return index


def check_pipeline_folder(folder: Path, spec: FamilySpec, *, image: bool, steps: int, allow_pickle: bool) -> None:
    """Refuse, before loading, a local pipeline folder that cannot render this request: another family's,
    pickle-only weights, a text-to-video model given an image (or an image-to-video one without), more steps
    than its scheduler has timesteps."""
    index = check_family_folder(folder, spec, allow_pickle=allow_pickle)
    channels = denoiser_channels(folder, spec.denoiser_folder)
    if spec.optional_image and channels is not None:
        cin, cout = channels
        conditioned = cin > cout       # image latents concatenated to the noise (Wan I2V: 16 + 20 = 36)
        if image and not conditioned and not index.get("expand_timesteps"):   # (Wan 2.2 TI2V takes both)
            raise VidrtError(f"image: {folder} is a text-to-video {spec.family} model ({spec.denoiser_folder} "
                             f"in_channels {cin}); remove image, or use an image-to-video model")
        if not image and conditioned:
            raise VidrtError(f"image: {folder} is an image-to-video {spec.family} model ({spec.denoiser_folder} "
                             f"in_channels {cin}) and needs image: a png/jpg, or a video (its first frame)")
    most = train_timesteps(folder)
    if most is not None and steps > most:
        raise VidrtError(f"steps: {steps} is more than the {most} timesteps of {folder}'s scheduler; use at most "
                         f"{most}")


def process_resident_bytes() -> int:
    """This process's resident memory now (0 where /proc is missing)."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def process_peak_resident_bytes() -> int:
    """This process's peak resident memory so far (ru_maxrss: KiB on Linux, bytes on macOS)."""
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def host_memory() -> tuple[int | None, int | None]:
    """(total, available) bytes of host memory: /proc/meminfo within the cgroup's limit (None when unknown)."""
    total = available = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            name, _, rest = line.partition(":")
            if name in ("MemTotal", "MemAvailable"):
                value = int(rest.split()[0]) * 1024
                total, available = (value, available) if name == "MemTotal" else (total, value)
    except (OSError, ValueError, IndexError):
        try:
            total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, AttributeError):
            pass
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit.isdigit():
            total = min(total, int(limit)) if total else int(limit)
            available = min(available, total) if available else None
    except OSError:
        pass
    return total, available
