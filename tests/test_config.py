"""Config schema: family rules, overrides, and one-line errors naming the key."""
from __future__ import annotations

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
