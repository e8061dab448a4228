"""Attention kernel choice (`memory.attention`): SDPA unless xformers can run, one clear error when xformers
is asked for where it cannot, and each family routed through the diffusers API its processors honour."""
from __future__ import annotations

import pytest
import torch

from vidrt.engine import attention
from vidrt.core.errors import VidrtError
from vidrt.models import get_adapter


def _processors(module):
    return {name: type(m.processor).__name__ for name, m in module.named_modules() if hasattr(m, "processor")}


@pytest.mark.parametrize("family", ["wan", "animatediff"])
def test_auto_on_cpu_keeps_sdpa_and_the_processors(family):
    adapter = get_adapter(family)
    den = adapter.denoiser(adapter.tiny(0))
    before = _processors(den)
    assert attention.set_attention(den, "auto", torch.device("cpu")) == "sdpa"
    assert attention.set_attention(den, "sdpa", torch.device("cpu")) == "sdpa"
    assert _processors(den) == before


def test_xformers_where_it_cannot_run_is_one_clear_error():
    adapter = get_adapter("wan")
    den = adapter.denoiser(adapter.tiny(0))
    with pytest.raises(VidrtError, match="memory.attention: xformers needs a CUDA device"):
        attention.set_attention(den, "xformers", torch.device("cpu"))
    with pytest.raises(VidrtError, match="is not one of"):
        attention.set_attention(den, "flash", torch.device("cpu"))


@pytest.mark.parametrize("family, expected", [("wan", "set_attention_backend"),
                                              ("animatediff", "enable_xformers_memory_efficient_attention"),
                                              ("i2vgen-xl", "enable_xformers_memory_efficient_attention")])
def test_each_family_uses_the_api_its_processors_honour(family, expected, monkeypatch):
    """Where xformers could run (CUDA + package; simulated here), Wan goes through attention backends (which
    the sliced forward passes on) and the UNets through diffusers' xformers processors."""
    adapter = get_adapter(family)
    den = adapter.denoiser(adapter.tiny(0))
    calls = []
    monkeypatch.setattr(attention, "xformers_usable", lambda device: True)
    monkeypatch.setattr(type(den), "set_attention_backend", lambda self, name: calls.append(("set_attention_backend", name)))
    monkeypatch.setattr(type(den), "enable_xformers_memory_efficient_attention",
                        lambda self: calls.append(("enable_xformers_memory_efficient_attention", None)))
    assert attention.set_attention(den, "auto", torch.device("cuda")) == "xformers"
    assert [c[0] for c in calls] == [expected]
    if expected == "set_attention_backend":
        assert calls[0][1] == "xformers"


def test_render_records_the_kernel_and_refuses_xformers_on_cpu(run_cli, tmp_path):
    import json

    out = tmp_path / "a.mp4"
    result = run_cli("render", "samples/wan-random.yaml", "-o", out, "--set", "steps=1", "--quiet")
    assert result.exit_code == 0, result.output
    assert json.loads(out.with_suffix(".json").read_text())["memory"]["attention"] == "sdpa"
    bad = tmp_path / "b.mp4"
    result = run_cli("render", "samples/wan-random.yaml", "-o", bad, "--set", "steps=1",
                     "--set", "memory.attention=xformers", "--quiet")
    assert result.exit_code != 0 and "memory.attention: xformers needs a CUDA device" in result.output
    assert not bad.exists()
