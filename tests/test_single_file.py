"""Single-file denoiser weights (`model.weights`, vidrt.models.single_file): GGUF (quantized) and safetensors files
in Wan's own layout and in diffusers', made here from the shipped sample model, loaded through diffusers'
from_single_file with the folder's configs; their output against the folder's model, their bytes in memory
against what the simulator counts from the file's header, and bad files refused in one line."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from vidrt.core.errors import VidrtError
from vidrt.core.tensors import module_bytes
from vidrt.models import load
from vidrt.models.single_file import read_single_file
from vidrt_dev.single_files import original_wan_names, write_gguf, write_safetensors

pytest.importorskip("gguf")
MODEL = "samples/tiny-wan"
# Stated tolerances (relative L2 error of one transformer call against the folder's float32 model): GGUF Q8_0
# keeps 8 bits per weight with one scale per 32 (measured 0.7 %), Q4_0 4 bits (measured 11 %).
TOLERANCE = {"Q8_0": 0.02, "Q4_0": 0.25}


@pytest.fixture(scope="module")
def files(tmp_path_factory, repo):
    from diffusers import WanTransformer3DModel

    folder = tmp_path_factory.mktemp("single")
    den = WanTransformer3DModel.from_pretrained(str(repo / MODEL / "transformer")).eval()
    state = den.state_dict()
    original = original_wan_names(state)
    out = {"state": state, "den": den}
    for quant in TOLERANCE:
        out[quant] = folder / f"tiny-wan-{quant}.gguf"
        out[quant + "_types"] = write_gguf(original, out[quant], quant)
    out["diffusers_gguf"] = folder / "tiny-wan-diffusers-Q8_0.gguf"
    write_gguf(state, out["diffusers_gguf"], "Q8_0")
    out["safetensors"] = folder / "tiny-wan.safetensors"
    write_safetensors(original, out["safetensors"])
    return out


def call(den, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 16, 3, 8, 8, generator=g)
    ctx = torch.randn(1, 16, den.config.text_dim, generator=g)
    with torch.no_grad():
        return den(hidden_states=x, timestep=torch.tensor([500]), encoder_hidden_states=ctx, return_dict=False)[0]


def rel_error(a, b) -> float:
    return float((a - b).norm() / b.norm())


def test_original_names_are_what_diffusers_converts(files):
    """The helper writes Wan's own names: diffusers' converter turns them back into exactly the model's."""
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    original = original_wan_names(files["state"])
    assert set(original) != set(files["state"]) and "head.head.weight" in original
    assert set(convert_wan_transformer_to_diffusers(dict(original))) == set(files["state"])


def test_safetensors_single_file_loads_the_same_weights(files, repo, monkeypatch):
    monkeypatch.chdir(repo)
    pipe = load("wan", MODEL, weights=str(files["safetensors"]))
    loaded = pipe.transformer.state_dict()
    assert set(loaded) == set(files["state"])
    assert all(torch.equal(loaded[k], v) for k, v in files["state"].items())


@pytest.mark.parametrize("quant", list(TOLERANCE))
def test_gguf_stays_quantized_and_close_to_the_folder_model(files, repo, monkeypatch, quant):
    from diffusers.quantizers.gguf.utils import GGUFLinear

    monkeypatch.chdir(repo)
    den = load("wan", MODEL, weights=str(files[quant])).transformer
    quantized = [m for m in den.modules() if isinstance(m, GGUFLinear)]
    written = sum(t == quant for t in files[quant + "_types"].values())
    # every quantized Linear weight stays quantized but those in the class's float32 modules (time embedder)
    assert 0 < len(quantized) <= written and len(quantized) >= written - 2
    assert all(type(m.weight).__name__ == "GGUFParameter" and m.weight.dtype == torch.uint8 for m in quantized)
    native = module_bytes([files["den"]])
    assert module_bytes([den]) < 0.5 * native
    err = rel_error(call(den), call(files["den"]))
    assert 0 < err < TOLERANCE[quant], err


def test_gguf_in_diffusers_layout_equals_wan_layout(files, repo, monkeypatch):
    monkeypatch.chdir(repo)
    a = load("wan", MODEL, weights=str(files["Q8_0"])).transformer
    b = load("wan", MODEL, weights=str(files["diffusers_gguf"])).transformer
    assert torch.equal(call(a), call(b))


def test_sliced_gguf_model_equals_unsliced(files, repo, monkeypatch):
    from vidrt.engine.slicing import SlicingConfig, disable_slicing, enable_slicing

    monkeypatch.chdir(repo)
    den = load("wan", MODEL, weights=str(files["Q8_0"])).transformer
    ref = call(den, seed=1)
    enable_slicing(den, SlicingConfig(chunk_tokens=16))
    try:
        sliced = call(den, seed=1)
    finally:
        disable_slicing(den)
    assert torch.allclose(sliced, ref, atol=1e-5, rtol=1e-5), (sliced - ref).abs().max()


def test_fp8_storage_refuses_a_gguf_model(files, repo, monkeypatch):
    import vidrt

    monkeypatch.chdir(repo)
    pipe = load("wan", MODEL, weights=str(files["Q8_0"]))
    with pytest.raises(VidrtError, match="GGUF-quantized weights already"):
        vidrt.enable_weight_storage(pipe, vidrt.WeightStorageConfig("fp8"))


def test_header_is_read_without_loading(files):
    info = read_single_file(files["Q8_0"])
    assert info.kind == "gguf" and info.quant_types[0] == "Q8_0"
    assert info.total_bytes < files["Q8_0"].stat().st_size <= info.total_bytes + 1_000_000
    assert "Q8_0" in info.describe()
    st = read_single_file(files["safetensors"])
    assert st.kind == "safetensors"
    assert st.total_bytes == sum(t.numel() * t.element_size() for t in files["state"].values())


def test_header_is_parsed_once_until_the_file_changes(files, tmp_path, monkeypatch):
    """The checks, the simulator and the loader each read the header of model.weights: one parse serves them
    all, and a file rewritten in place (another size or time) is parsed again."""
    import shutil

    import vidrt.models.single_file as sf

    calls = []
    real = sf._read_gguf
    monkeypatch.setattr(sf, "_read_gguf", lambda path: calls.append(path) or real(path))
    copy = tmp_path / "copy.gguf"
    shutil.copy(files["Q8_0"], copy)
    first, second = read_single_file(copy), read_single_file(copy)
    assert len(calls) == 1 and first.tensors == second.tensors and first.tensors is not second.tensors
    shutil.copy(files["Q4_0"], copy)
    assert read_single_file(copy).quant_types[0] == "Q4_0" and len(calls) == 2


def test_a_checkpoint_knows_its_weights_file(files, repo, tmp_path, monkeypatch):
    """A checkpoint's identity names model.weights by its absolute path and its content's head: the same file
    under a relative path resumes; the file rewritten in place with other weights does not, and says which."""
    import shutil

    from vidrt.run.checkpoint import differences, fingerprint, identity

    shutil.copy(files["Q8_0"], tmp_path / "den.gguf")
    monkeypatch.chdir(tmp_path)
    config = {"model": {"family": "wan", "path": str(repo / MODEL), "weights": "den.gguf"}, "prompt": "a red circle"}
    absolute = {**config, "model": {**config["model"], "weights": str(tmp_path / "den.gguf")}}
    saved, before = identity(config), fingerprint(config)
    assert fingerprint(absolute) == before
    shutil.copy(files["Q4_0"], tmp_path / "den.gguf")
    assert fingerprint(config) != before
    assert differences(saved, identity(config)) == ["single_file_weights (weights differs)"]
    assert "single_file_weights" not in identity({"model": {"family": "wan", "path": str(repo / MODEL)}})


def test_simulated_weight_bytes_equal_the_loaded_gguf_model(files, repo, monkeypatch):
    """The dry run counts the denoiser from the file's header as diffusers' GGUF loader keeps it: exactly the
    bytes of the loaded model; a plan's resident bytes under group offloading shrink with it."""
    from vidrt.config import load_config
    from vidrt.memory.simulate import simulate
    from vidrt.memory.settings import MemorySettings, settings_from_config

    monkeypatch.chdir(repo)
    real = load("wan", MODEL, weights=str(files["Q8_0"])).transformer
    cfg = load_config("samples/tiny.yaml", [f"model.weights={files['Q8_0']}"])
    settings = settings_from_config(cfg)
    assert settings.weights == "gguf"
    quant = simulate(cfg, settings)
    native = simulate(load_config("samples/tiny.yaml"), MemorySettings())
    assert quant.params["transformer"] == module_bytes([real])
    layout = simulate(load_config("samples/tiny.yaml", [f"model.weights={files['diffusers_gguf']}"]),
                      settings_from_config(cfg))
    assert layout.params["transformer"] == quant.params["transformer"]     # the diffusers layout counts the same
    assert native.params["transformer"] == module_bytes([files["den"]])
    group = MemorySettings(offload="group", granularity="block")
    q_group = simulate(cfg, MemorySettings(offload="group", granularity="block", weights="gguf"))
    n_group = simulate(load_config("samples/tiny.yaml"), group)
    assert q_group.stage("denoise")["param_bytes"] < n_group.stage("denoise")["param_bytes"]


def test_render_with_gguf_weights(run_cli, files, tmp_path):
    from vidrt.run.video import read_video

    outs = {}
    for name, extra in (("native", []), ("gguf", ["--set", f"model.weights={files['Q8_0']}"])):
        out = tmp_path / f"{name}.mp4"
        result = run_cli("render", "samples/tiny.yaml", "-o", out, "--set", "steps=6", *extra, "--quiet")
        assert result.exit_code == 0, result.output
        outs[name] = (read_video(out).astype(np.float32), json.loads(out.with_suffix(".json").read_text()))
    (native, _), (gguf, side) = outs["native"], outs["gguf"]
    assert side["memory"]["weights"]["storage"] == "gguf"
    assert gguf.shape == native.shape
    psnr = 10 * np.log10(255.0 ** 2 / max(float(np.mean((gguf - native) ** 2)), 1e-10))
    assert psnr > 25, psnr     # Q8_0 weights: the same video up to small differences


# ------------------------------------------------------------------------------------------- bad files
@pytest.mark.parametrize("name, content, overrides, needles", [
    ("missing.gguf", None, [], ("model.weights", "no such file")),
    ("weights.bin", b"x", [], ("model.weights", "neither a .gguf nor a .safetensors")),
    ("corrupt.gguf", b"not a gguf file at all" * 10, [], ("model.weights", "not a readable gguf file")),
    ("corrupt.safetensors", b"\x00" * 64, [], ("model.weights", "not a readable safetensors file")),
    ("Q8_0", None, ["memory.weights=fp8"], ("memory.weights", "already quantized")),
])
def test_bad_weights_files_are_one_line(run_cli, files, tmp_path, name, content, overrides, needles):
    from test_bad_input import clean_failure

    path = files[name] if name in files else tmp_path / name
    if content is not None:
        path.write_bytes(content)
    out_dir = tmp_path / "out"
    result = run_cli("render", "samples/tiny.yaml", "-o", out_dir / "x.mp4", "--set", f"model.weights={path}",
                     *[a for o in overrides for a in ("--set", o)], "--quiet")
    clean_failure(result, *needles, out_dir=out_dir)


def test_family_without_a_single_file_loader(run_cli, files, tmp_path):
    from test_bad_input import clean_failure

    out_dir = tmp_path / "out"
    result = run_cli("render", "samples/animatediff-random.yaml", "-o", out_dir / "x.mp4",
                     "--set", f"model.weights={files['Q8_0']}", "--quiet")
    clean_failure(result, "model.weights", "UNetMotionModel", "no single-file loader", out_dir=out_dir)


def test_host_memory_check_counts_the_file_not_the_folders_denoiser(files, repo, monkeypatch):
    import vidrt.config.checks as checks
    from vidrt.config import check_request, load_config
    from vidrt.core.units import format_bytes
    from vidrt.models.loading import weight_files

    monkeypatch.chdir(repo)
    monkeypatch.setattr(checks, "host_memory", lambda: (1, None))
    folder = repo / MODEL
    others = sum(f.stat().st_size for f in weight_files(folder) if "transformer" not in f.parts)
    for weights, expected in ((None, sum(f.stat().st_size for f in weight_files(folder))),
                              (files["Q8_0"], others + files["Q8_0"].stat().st_size)):
        cfg = load_config("samples/tiny.yaml", ["devices=[cpu]"] + ([f"model.weights={weights}"] if weights else []))
        with pytest.raises(VidrtError) as exc:
            check_request(cfg)
        assert f"weights {format_bytes(expected)}" in str(exc.value), str(exc.value)


# --------------------------------------------------------------------------- two experts (Wan 2.2 A14B)
@pytest.fixture(scope="module")
def experts(tmp_path_factory, repo):
    """An A14B-shaped pipeline folder from the sample model (transformer_2: its transformer with other weights,
    switched to below the boundary) and each expert as a Q8_0 GGUF and a safetensors file in Wan's layout."""
    from diffusers import WanPipeline

    folder = tmp_path_factory.mktemp("experts")
    base = WanPipeline.from_pretrained(str(repo / MODEL))
    second = type(base.transformer).from_config(base.transformer.config)
    g = torch.Generator().manual_seed(3)
    second.load_state_dict({k: v + 0.02 * torch.randn(v.shape, generator=g) if v.is_floating_point() else v
                            for k, v in base.transformer.state_dict().items()})
    pipe = WanPipeline(**{k: getattr(base, k) for k in ("vae", "text_encoder", "tokenizer", "transformer",
                                                        "scheduler")}, transformer_2=second.eval(),
                       boundary_ratio=0.875)
    pipe.save_pretrained(folder / "a14b")
    out = {"folder": folder / "a14b", "state": pipe.transformer.state_dict(), "state_2": second.state_dict(),
           "den": pipe.transformer.eval(), "den_2": second}
    for key in ("state", "state_2"):
        original = original_wan_names(out[key])
        write_gguf(original, folder / f"{key}.gguf", "Q8_0")
        write_safetensors(original, folder / f"{key}.safetensors")
    return out


def test_two_expert_files_load_each_into_its_expert(experts):
    """model.weights replaces the high-noise expert, model.weights_2 the low-noise one: given each other's files,
    the loaded experts are swapped exactly."""
    files = experts["folder"].parent
    pipe = load("wan", str(experts["folder"]), weights=str(files / "state_2.safetensors"),
                weights_2=str(files / "state.safetensors"))
    first, second = pipe.transformer.state_dict(), pipe.transformer_2.state_dict()
    assert all(torch.equal(first[k], v) for k, v in experts["state_2"].items())
    assert all(torch.equal(second[k], v) for k, v in experts["state"].items())


def test_two_gguf_experts_stay_quantized_and_the_dry_run_counts_both(experts, repo, monkeypatch):
    """Both experts from Q8_0 files: quantized, each close to its own folder expert, and the dry run counts each
    one's bytes from its own file's header - exactly the loaded modules' bytes."""
    from diffusers.quantizers.gguf.utils import GGUFLinear

    from vidrt.config import load_config
    from vidrt.memory.simulate import simulate
    from vidrt.memory.settings import settings_from_config

    monkeypatch.chdir(repo)
    files = experts["folder"].parent
    pipe = load("wan", str(experts["folder"]), weights=str(files / "state.gguf"),
                weights_2=str(files / "state_2.gguf"))
    for name, ref in (("transformer", experts["den"]), ("transformer_2", experts["den_2"])):
        den = getattr(pipe, name)
        assert any(isinstance(m, GGUFLinear) for m in den.modules())
        assert 0 < rel_error(call(den), call(ref)) < TOLERANCE["Q8_0"]
    cfg = load_config("samples/tiny.yaml", [f"model.path={experts['folder']}", f"model.weights={files / 'state.gguf'}",
                                            f"model.weights_2={files / 'state_2.gguf'}"])
    sim = simulate(cfg, settings_from_config(cfg))
    assert sim.params["transformer"] == module_bytes([pipe.transformer])
    assert sim.params["transformer_2"] == module_bytes([pipe.transformer_2])
    assert sim.params["transformer_2"] < 0.5 * module_bytes([experts["den_2"]])


def test_render_with_two_gguf_experts(run_cli, experts, tmp_path):
    files = experts["folder"].parent
    out = tmp_path / "x.mp4"
    result = run_cli("render", "samples/tiny.yaml", "-o", out, "--set", "steps=4", "--set",
                     f"model.path={experts['folder']}", "--set", f"model.weights={files / 'state.gguf'}",
                     "--set", f"model.weights_2={files / 'state_2.gguf'}", "--quiet")
    assert result.exit_code == 0, result.output
    side = json.loads(out.with_suffix(".json").read_text())
    assert side["memory"]["weights"]["storage"] == "gguf" and out.is_file()


def test_expert_files_that_do_not_match_the_folder_are_one_line(run_cli, files, experts, tmp_path):
    from test_bad_input import clean_failure

    weights = experts["folder"].parent
    cases = [
        (["samples/wan22-a14b-random.yaml", f"model.weights={files['Q8_0']}"], ("model.weights", "two experts",
                                                                                "model.weights_2")),
        (["samples/tiny.yaml", f"model.weights={files['Q8_0']}", f"model.weights_2={files['Q8_0']}"],
         ("model.weights_2", "has one denoiser")),
        (["samples/tiny.yaml", f"model.weights_2={files['Q8_0']}"], ("model.weights_2", "give model.weights")),
        (["samples/tiny.yaml", f"model.path={experts['folder']}", f"model.weights={weights / 'state.gguf'}",
          f"model.weights_2={weights / 'state_2.safetensors'}"], ("model.weights_2", "both experts as .gguf")),
        (["samples/tiny.yaml", f"model.path={experts['folder']}", f"model.weights={weights / 'state.gguf'}",
          f"model.weights_2={tmp_path / 'missing.gguf'}"], ("model.weights_2", "no such file")),
    ]
    for (config, *sets), needles in cases:
        out_dir = tmp_path / "out"
        result = run_cli("render", config, "-o", out_dir / "x.mp4", *[a for s in sets for a in ("--set", s)],
                         "--quiet")
        clean_failure(result, *needles, out_dir=out_dir)
