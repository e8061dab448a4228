"""Config schema: family rules, overrides, and one-line errors naming the key."""
from __future__ import annotations

from pathlib import Path

import pytest

from vidrt.config import load_config, parse_config
from vidrt.core.errors import VidrtError

BASE = {"model": {"family": "wan", "path": "samples/tiny-random-wan"}, "prompt": "a red circle",
        "frames": 9, "height": 32, "width": 32}


def test_defaults_and_types():
    cfg = parse_config(BASE)
    assert cfg.steps == 20 and cfg.guidance == 5.0 and cfg.memory.slicing == "auto"
    assert cfg.output.path == "out/video.mp4" and cfg.devices == ["auto"]


def test_overrides_parse_yaml_values():
    cfg = parse_config(BASE, ["steps=3", "guidance=1.5", "memory.slicing.frames=2", "output.fps=12",
                              "acceleration.policy=taylor_gate", "acceleration.threshold=0.3"])
    assert cfg.steps == 3 and cfg.guidance == 1.5 and cfg.output.fps == 12
    assert cfg.memory.slicing.frames == 2
    assert cfg.acceleration.as_dict() == {"policy": "taylor_gate", "threshold": 0.3}
    # YAML 1.1 reads 1e9 as a word; an acceleration setting takes it as the number (also nested per policy)
    cfg = parse_config(BASE, ["acceleration.policy=taylor_gate", "acceleration.threshold=1e9",
                              "acceleration.taylor_gate.warmup=3e0"])
    assert cfg.acceleration.as_dict() == {"policy": "taylor_gate", "threshold": 1e9, "taylor_gate": {"warmup": 3.0}}


@pytest.mark.parametrize("patch, message", [
    ({"bogus": 1}, "unknown key 'bogus'"),
    ({"memory": {"slicing": "auto", "wat": 1}}, "unknown key 'memory.wat'"),
    ({"steps": "many"}, "steps"),
    ({"frames": 0}, "frames"),
    ({"frames": 16}, "frames: 16 is not 4k+1"),
    ({"height": 40}, "height: 40 is not a multiple of 16"),
    ({"width": 24}, "width: 24 is not a multiple of 16"),
    ({"steps": 0}, "steps"),
    ({"guidance": -1}, "guidance"),
    ({"devices": ["tpu"]}, "devices"),
    ({"model": {"family": "sora", "path": "x"}}, "model.family"),
    ({"model": {"family": "i2vgen-xl", "path": "x"}, "height": 32}, "image: the i2vgen-xl family needs"),
    ({"guidance": float("inf")}, "guidance: Input should be a finite number (got inf)"),
    ({"guidance": float("nan")}, "guidance: Input should be a finite number"),
    ({"guidance": 1e30}, "guidance: Input should be less than or equal to 100"),
    ({"seed": 2 ** 64}, "seed: 18446744073709551616 is outside 0..18446744073709551615"),
    ({"seed": -1}, "seed: -1 is outside"),
    ({"acceleration": {"policy": "taylor_gate", "threshold": float("inf")}}, "acceleration.threshold: inf is not"),
    ({"memory": {"budget": "lots"}}, "memory.budget: 'lots' is not a size"),
    ({"promt": "x"}, "unknown key 'promt'; did you mean 'prompt'?"),
    ({"memory": {"slicng": "off"}}, "unknown key 'memory.slicng'; did you mean 'memory.slicing'?"),
    ({"memory": {"slicing": {"fremes": 2}}},
     "unknown key 'memory.slicing.fremes'; did you mean 'memory.slicing.frames'?"),
    ({"memory": {"offload": "grup"}},
     "memory.offload: Input should be 'auto', 'none', 'model', 'group' or 'shard' (got 'grup'); did you mean "
     "'group'?"),
    ({"model": {"family": "wna", "path": "x"}}, "did you mean 'wan'?"),
    ({"model": {"family": "wan", "path": "x", "motion_adapter": "y"}}, "model.motion_adapter: only the animatediff"),
    ({"model": {"family": "animatediff", "path": "x"}, "frames": 8, "image": "c.png"}, "image: the animatediff family "
                                                                                       "renders from text only"),
])
def test_bad_values_name_the_key(patch, message):
    with pytest.raises(VidrtError) as info:
        parse_config({**BASE, **patch})
    text = str(info.value)
    assert message in text and "\n" not in text


def test_yaml_on_off_words_survive_yaml_booleans(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: {family: wan, path: x}\nprompt: p\nframes: 9\nheight: 32\nwidth: 32\n"
                    "memory: {slicing: off, vae_tiling: on}\n")
    cfg = load_config(path)
    assert cfg.memory.slicing == "off" and cfg.memory.vae_tiling == "on"
    assert parse_config(BASE, ["memory.slicing=off", "memory.vae_tiling=off"]).memory.vae_tiling == "off"


def test_unet_families_accept_multiples_of_8():
    cfg = parse_config({**BASE, "model": {"family": "animatediff", "path": "x"}, "frames": 8, "height": 40})
    assert cfg.height == 40 and cfg.frames == 8


def test_yaml_syntax_error_names_the_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {family: wan\nprompt: [\n")
    with pytest.raises(VidrtError, match=r"YAML syntax error in .*bad.yaml at line \d+"):
        load_config(bad)


def test_missing_config_file(tmp_path):
    with pytest.raises(VidrtError, match="no such file"):
        load_config(tmp_path / "nope.yaml")


def test_bad_override_syntax():
    with pytest.raises(VidrtError, match="--set: 'steps' is not key=value"):
        parse_config(BASE, ["steps"])


@pytest.mark.parametrize("override, message", [
    ("steps.x=1", "--set: steps.x: steps is a single value, not a group of keys; set it with --set steps=VALUE"),
    ("model.path.x=1", "model.path is a single value"),
    ("acceleration.policy.x=1", "acceleration.policy is a single value"),
])
def test_override_into_a_single_value(override, message):
    with pytest.raises(VidrtError) as info:
        parse_config({**BASE, "steps": 3}, [override])
    assert message in str(info.value)
    with pytest.raises(VidrtError, match="single value"):   # also when the file does not set the key
        parse_config(BASE, [override])


def test_overrides_that_build_groups():
    cfg = parse_config({**BASE, "memory": {"slicing": "auto"}}, ["memory.slicing.frames=2", "long.window=9",
                                                                 "acceleration.custom.depth=2"])
    assert cfg.memory.slicing.frames == 2 and cfg.long.window == 9
    assert cfg.acceleration.as_dict()["custom"] == {"depth": 2}


def test_overrides_leave_the_callers_mapping_alone():
    data = {**BASE, "memory": {"slicing": {"frames": 1}}}
    parse_config(data, ["memory.slicing.frames=4"])
    assert data["memory"]["slicing"] == {"frames": 1}


def test_relative_paths_resolve_beside_the_config_then_the_working_directory(tmp_path, monkeypatch):
    (tmp_path / "cfg" / "model").mkdir(parents=True)
    (tmp_path / "cfg" / "c.png").write_bytes(b"beside")
    (tmp_path / "cwd").mkdir()
    (tmp_path / "cwd" / "c.png").write_bytes(b"here")
    (tmp_path / "cfg" / "c.yaml").write_text("model: {family: wan, path: model}\nprompt: p\nframes: 9\n"
                                             "height: 32\nwidth: 32\nimage: c.png\n")
    monkeypatch.chdir(tmp_path / "cwd")
    cfg = load_config("../cfg/c.yaml")
    assert cfg.model.path == str(tmp_path / "cfg" / "model")      # written in the file: beside it first
    assert cfg.image == str(tmp_path / "cfg" / "c.png")
    assert cfg.source == Path("../cfg/c.yaml")
    cfg = load_config("../cfg/c.yaml", ["image=c.png"])
    assert cfg.image == "c.png"                                  # given with --set: the working directory first
    assert cfg.overrides == ("image=c.png",)
    cfg = load_config("../cfg/c.yaml", ["model.path=org/name"])
    assert cfg.model.path == "org/name"                           # found nowhere: a hub id, as written


def test_config_path_is_a_folder(tmp_path):
    with pytest.raises(VidrtError, match="is a folder"):
        load_config(tmp_path)
