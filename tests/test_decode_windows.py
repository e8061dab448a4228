"""Re-anchored decode windows of the causal Wan VAE (`long.decode_window`): the streamed decoder against a plain
reference built from the VAE's own decode, the config's rules, and the runner using what a model declares."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from vidrt.config import parse_config
from vidrt.core.errors import VidrtError
from vidrt.core.windows import DecodeWindows, decode_windows_for
from vidrt.models import get_adapter
from vidrt.models.specs import get_spec
from vidrt.models.wan_vae import decode_stream, latent_stats


def reference_decode(vae, z: torch.Tensor, windows: DecodeWindows) -> torch.Tensor:
    """The whole video, window by window, written as plainly as possible: `vae.decode` of each window (after the
    first: the anchor, the frame before the window's first frame encoded alone, then its latent frames), the
    anchor's own frame dropped, the frames both windows decoded cross-faded from the earlier into the later."""
    mean, inv_std = latent_stats(vae.config, z.device, z.dtype)
    raw = z / inv_std + mean
    first = lambda k: 0 if k == 0 else 4 * (k - 1) + 1  # noqa: E731
    starts = windows.starts(z.shape[2])
    video = vae.decode(raw[:, :, :windows.window], return_dict=False)[0].float()
    for start in starts[1:]:
        end = min(z.shape[2], start + windows.window)
        anchor = vae.encode(video[:, :, first(start) - 1:first(start)]).latent_dist.mode()
        new = vae.decode(torch.cat([anchor, raw[:, :, start:end]], dim=2), return_dict=False)[0].float()[:, :, 1:]
        fade = first(start + windows.overlap) - first(start)
        for j in range(fade):
            w = (j + 0.5) / fade
            f = first(start) + j
            video[:, :, f:f + 1] = video[:, :, f:f + 1] * (1 - w) + new[:, :, j:j + 1] * w
        video = torch.cat([video[:, :, :first(start) + fade], new[:, :, fade:]], dim=2)
    return video


@pytest.fixture(scope="module")
def vae():
    return get_adapter("wan").tiny(0).vae.eval()


@pytest.mark.parametrize("latent_frames, window, overlap", [(8, 3, 1), (8, 4, 2), (7, 3, 0), (9, 5, 1), (6, 5, 2)])
def test_windows_stream_the_plain_reference(vae, latent_frames, window, overlap):
    """Bit-identical to the reference, the frames before the first take-over identical to decoding the whole
    sequence at once (the causal decoder has not seen a later latent frame there), and streamed in more than one
    piece."""
    z = torch.randn(1, 16, latent_frames, 4, 4, generator=torch.Generator().manual_seed(latent_frames + window))
    windows = DecodeWindows(window, overlap)
    with torch.no_grad():
        chunks = list(decode_stream(vae, z, windows))
        ref = reference_decode(vae, z, windows)
        whole = torch.cat(list(decode_stream(vae, z)), dim=2)
    out = torch.cat(chunks, dim=2)
    assert out.shape == whole.shape and out.shape[2] == 4 * latent_frames - 3
    assert torch.equal(out, ref)
    second = windows.starts(latent_frames)[1]
    same = 4 * (second - 1) + 1           # the first frame the second window decodes
    assert torch.equal(out[:, :, :same], whole[:, :, :same])
    assert not torch.allclose(out[:, :, same:], whole[:, :, same:], atol=1e-3)
    assert len(chunks) > len(windows.starts(latent_frames))


def test_windows_with_vae_tiling_stream_the_reference():
    """With tiling each window decodes tile by tile on the host (`tiled_decode_via_host`) and the anchor encodes in
    tiles (`vae.encode`): still the plain reference, whose `vae.decode` is diffusers' tiled decoder then."""
    vae = get_adapter("wan").tiny(0).vae.eval()
    vae.enable_tiling(tile_sample_min_height=32, tile_sample_min_width=32, tile_sample_stride_height=24,
                      tile_sample_stride_width=24)
    z = torch.randn(1, 16, 7, 6, 8, generator=torch.Generator().manual_seed(3))
    windows = DecodeWindows(3, 1)
    with torch.no_grad():
        out = torch.cat(list(decode_stream(vae, z, windows)), dim=2)
        ref = reference_decode(vae, z, windows)
    assert out.shape == (1, 3, 25, 48, 64)
    assert torch.equal(out, ref)


def test_a_sequence_within_one_window_decodes_as_before(vae):
    z = torch.randn(1, 16, 4, 4, 4, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(torch.cat(list(decode_stream(vae, z, DecodeWindows(4, 1))), dim=2),
                           torch.cat(list(decode_stream(vae, z)), dim=2))


def test_window_starts_cover_the_sequence():
    assert DecodeWindows(10, 1).starts(24) == [0, 9, 18]
    assert DecodeWindows(10, 1).starts(10) == [0]
    assert DecodeWindows(3, 0).starts(7) == [0, 3, 6]


def test_decode_window_settings():
    wan, ad = get_spec("wan"), get_spec("animatediff")
    declared = (37, 4)
    assert decode_windows_for(wan, "auto", None, declared) == DecodeWindows(10, 1)
    assert decode_windows_for(wan, "auto", None, None) is None        # a model that declares none: whole
    assert decode_windows_for(wan, "off", None, declared) is None
    assert decode_windows_for(wan, 33, None, declared) == DecodeWindows(9, 1)
    assert decode_windows_for(wan, 33, 8, None) == DecodeWindows(9, 2)
    assert decode_windows_for(wan, 33, None, None) == DecodeWindows(9, 1)   # one latent frame shared by default
    assert decode_windows_for(ad, "auto", None, declared) is None
    with pytest.raises(VidrtError, match="long.decode_overlap: 37 frames is not shorter than the decode window"):
        decode_windows_for(wan, 37, 37, None)
    with pytest.raises(VidrtError, match="long.decode_window: 4 frames is one latent frame"):
        decode_windows_for(wan, 4, 0, None)
    with pytest.raises(VidrtError, match="only a causal video VAE"):
        decode_windows_for(ad, 17, None, None)


def test_the_model_note_is_read_once_until_it_changes(tmp_path, monkeypatch):
    """A trained sample's vidrt.json answers the native length and the declared decode windows from one read;
    a copy goes out (a caller's change does not stick), and a rewritten note is read again."""
    import json
    from types import SimpleNamespace

    import vidrt.models.specs as specs

    calls = []
    monkeypatch.setattr(specs, "json", SimpleNamespace(loads=lambda text: calls.append(text) or json.loads(text)))
    note, wan = tmp_path / "vidrt.json", get_spec("wan")
    note.write_text(json.dumps({"native_frames": 9, "decode_window": {"frames": 37, "overlap": 4}}))
    assert wan.native_frame_count(tmp_path) == 9 and wan.declared_decode_window(tmp_path) == (37, 4)
    assert len(calls) == 1
    specs.sample_meta(tmp_path)["native_frames"] = 1
    assert wan.native_frame_count(tmp_path) == 9
    note.write_text(json.dumps({"native_frames": 17}))
    assert wan.native_frame_count(tmp_path) == 17 and wan.declared_decode_window(tmp_path) is None
    note.write_text("not json")
    assert wan.native_frame_count(tmp_path) == wan.native_frames and len(calls) == 3


BASE = {"model": {"family": "wan", "path": "samples/tiny-random-wan"}, "prompt": "a red circle",
        "frames": 9, "height": 32, "width": 32}


def test_decode_window_config_keys():
    assert parse_config(BASE).long is None
    assert parse_config(BASE, ["long.decode_window=off"]).long.decode_window == "off"   # YAML's boolean off
    cfg = parse_config(BASE, ["long.decode_window=33", "long.decode_overlap=8"])
    assert cfg.long.decode_window == 33 and cfg.long.decode_overlap == 8
    for bad in ("1", "37.5", "sometimes"):
        with pytest.raises(VidrtError, match="long.decode_window: give auto, off or a number of frames"):
            parse_config(BASE, [f"long.decode_window={bad}"])
    with pytest.raises(VidrtError, match="long.decode_overlap"):
        parse_config(BASE, ["long.decode_overlap=-4"])


def test_bad_decode_window_is_refused_before_the_model_loads(run_cli, tmp_path):
    out = tmp_path / "x.mp4"
    result = run_cli("render", "samples/animatediff-random.yaml", "-o", out, "--set", "long.decode_window=17")
    assert result.exit_code != 0 and "only a causal video VAE" in result.output
    assert not out.exists()


def test_the_sample_model_decodes_long_videos_in_its_declared_windows(tmp_path, repo, monkeypatch):
    """The shipped sample declares its decode window (vidrt.json); a render longer than it decodes in windows
    (the sidecar says so), `off` decodes the whole sequence: the same latents, so the frames written agree up to
    where the second window takes over and differ after it."""
    from vidrt.config import load_config
    from vidrt.run import render as runner

    written = []
    write = runner.write_video

    def keep(path, frames, *a, **kw):
        frames = list(frames)
        written.append(np.stack(frames))
        return write(path, frames, *a, **kw)

    monkeypatch.setattr(runner, "write_video", keep)
    frames, sides = {}, {}
    for setting in ("auto", "off"):
        cfg = load_config(repo / "samples" / "tiny.yaml", ["frames=45", "steps=2", f"long.decode_window={setting}"])
        result = runner.render(cfg, tmp_path / f"{setting}.mp4", show_progress=False)
        frames[setting], sides[setting] = written[-1], result.sidecar
    assert sides["auto"]["decode_windows"] == {"window_latent_frames": 10, "overlap_latent_frames": 1, "windows": 2}
    assert sides["off"]["decode_windows"] is None
    same = 4 * (9 - 1) + 1
    assert np.array_equal(frames["auto"][:same], frames["off"][:same])
    assert not np.array_equal(frames["auto"][same:], frames["off"][same:])


@pytest.mark.parametrize("latent_frames, window, overlap", [(8, 3, 1), (7, 3, 0), (24, 10, 1), (6, 5, 2), (4, 5, 1)])
def test_priced_decoder_calls_are_the_calls_the_decoder_runs(vae, monkeypatch, latent_frames, window, overlap):
    """`DecodeWindows.decoded_latents` (what the simulator prices) counts the latent frames of every decoder call
    the windowed decode really makes: each later window's anchor re-decoded, a short last window."""
    from vidrt.models import wan_vae

    calls, raw = [], wan_vae._decode_raw
    monkeypatch.setattr(wan_vae, "_decode_raw", lambda v, z: (calls.append(z.shape[2]), raw(v, z))[1])
    z = torch.randn(1, 16, latent_frames, 4, 4, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        list(decode_stream(vae, z, DecodeWindows(window, overlap)))
    assert calls == DecodeWindows(window, overlap).decoded_latents(latent_frames)
    assert sum(calls) >= latent_frames


def test_the_simulator_prices_the_declared_decode_windows(repo):
    """A dry run of a long render of the sample prices its decode as the windows it runs (the declared 10 latent
    frames, 1 shared: 24 latent frames decode in calls of 10, 11 and 7), `off` as one call on the whole sequence;
    a native-length render decodes in one window either way."""
    from vidrt.config import load_config
    from vidrt.memory.simulate import simulate

    def decode_seconds(frames, setting):
        cfg = load_config(repo / "samples" / "tiny.yaml", [f"frames={frames}", f"long.decode_window={setting}"])
        return simulate(cfg, track_modules=False).predicted_seconds["vae_decode"]

    assert DecodeWindows(10, 1).decoded_latents(24) == [10, 11, 7]
    windowed, whole = decode_seconds(93, "auto"), decode_seconds(93, "off")
    assert windowed == pytest.approx(whole * 28 / 24, rel=0.01)
    assert decode_seconds(9, "auto") == decode_seconds(9, "off")
