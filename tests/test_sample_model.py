"""The shipped tiny text-to-video sample model (samples/tiny-wan) and its training script."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import vidrt_dev.quality as q
from vidrt_dev.sample_data import make_clip, parse_caption

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "samples" / "tiny-wan"
STEPS = 20
GUIDANCE = 5.0
# (prompt, seed): different object colours, left/right motion.
PROMPTS = [
    ("a red circle moves right on a blue background", 0),
    ("a green square moves left on a black background", 1),
    ("a yellow circle moves right on a magenta background", 2),
]


def _load_train_module():
    spec = importlib.util.spec_from_file_location("train_tiny", ROOT / "samples" / "train_tiny.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_measurements_on_procedural_data():
    for seed in range(6):
        video, cap = make_clip(seed, frames=9)
        p = parse_caption(cap)
        assert q.blob_colour(video) == p["colour"]
        assert q.nearest_colour(q.background_colour(video)) == p["background"]
        assert q.motion_direction(video) == p["direction"]
    # a static clip has no direction
    still = np.repeat(make_clip(0, frames=9)[0][:1], 9, axis=0)
    assert q.motion_direction(still) is None


def test_long_clips_keep_native_speed_on_a_torus():
    """The long stages' data: clip i starts as make_dataset's clip i, moves at its speed past the native length
    (wrapping at the edges, so the object is whole in every frame), and its shape is read right frame by frame."""
    from vidrt_dev.sample_data import make_dataset, make_long_dataset

    long_clips, long_caps = make_long_dataset(6, seed=3, frames=73, pace_frames=9)
    native, caps = make_dataset(6, seed=3, frames=9)
    assert long_caps == caps and np.array_equal(long_clips[:, :9], native)
    for video, cap in zip(long_clips, caps):
        p = parse_caption(cap)
        masks = q.blob_masks(video)
        area = masks.reshape(len(masks), -1).sum(axis=1)
        assert area.min() >= 0.8 * area.max(), area            # never cut off by an edge
        track = q.centroid_track(video[:9])
        step = np.hypot(*(track[-1] - track[0])) / 8
        assert step > 1.0                                        # native speed: about 1.8 px per frame
        # (a shape crossing an edge is cut in two: the detector reads the frames where it is whole)
        whole = [m for m in masks if not (m[0].any() or m[-1].any() or m[:, 0].any() or m[:, -1].any())]
        assert len(whole) >= 20 and np.mean([q.shape_of(m) == p["shape"] for m in whole]) >= 0.95, cap


def test_quick_training_decreases_loss(tmp_path):
    train = _load_train_module()
    threads = torch.get_num_threads()
    try:
        res = train.main(["--quick", "--out", str(tmp_path / "tiny")])
    finally:
        torch.set_num_threads(threads)
    losses = res["dit_losses"]
    assert len(losses) >= 10
    assert np.mean(losses[-5:]) < 0.9 * np.mean(losses[:5]), losses
    meta = json.loads((tmp_path / "tiny" / "vidrt.json").read_text())
    assert meta["family"] == "wan" and meta["native_frames"] % 4 == 1
    assert list((tmp_path / "tiny").rglob("*.safetensors"))
    assert not list((tmp_path / "tiny").rglob("*.bin"))
    assert meta["long"]["long_vae"]["steps"] > 0 and meta["long"]["long_whole"]["steps"] > 0
    assert len(meta["long"]["frame_mse"]) == meta["long"]["long_whole"]["frames"]


def test_outline_weights_mark_the_edge_of_the_object():
    """Stage 1b's loss weights: 1 on the background, the object weight inside, plus the outline weight on the
    object's border pixels and the background pixels touching it (not diagonally)."""
    train = _load_train_module()
    x = -torch.ones(1, 3, 1, 8, 8)
    x[..., 2:6, 2:6] = 1.0                       # a 4x4 white square on black
    w = train.edge_weights(x, 4.0, 2.0)[0, 0, 0]
    inside, ring, touching = torch.zeros(8, 8, dtype=torch.bool), torch.zeros(8, 8, dtype=torch.bool), \
        torch.zeros(8, 8, dtype=torch.bool)
    inside[3:5, 3:5] = True
    ring[2:6, 2:6] = True
    ring &= ~inside
    touching[1:7, 2:6] = True
    touching[2:6, 1:7] = True
    touching &= ~(ring | inside)
    assert torch.all(w[inside] == 4) and torch.all(w[ring] == 6) and torch.all(w[touching] == 3)
    assert torch.all(w[~(inside | ring | touching)] == 1)


def test_quick_training_with_the_corner_stage_and_mixed_sigmas(tmp_path):
    """`--vae-corner-steps` runs stage 1b after stage 1 (its VAE encodes the transformer's latents) and
    `--dit-sigmas mix` trains stage 3 on them; the metadata records both."""
    train = _load_train_module()
    threads = torch.get_num_threads()
    try:
        res = train.main(["--quick", "--out", str(tmp_path / "tiny"), "--vae-corner-steps", "2",
                          "--dit-sigmas", "mix", "--no-long", "--cache", str(tmp_path / "cache")])
    finally:
        torch.set_num_threads(threads)
    assert len(res["vae_losses"]) == 3 + 2 and (tmp_path / "cache" / "corners.pt").is_file()
    meta = json.loads((tmp_path / "tiny" / "vidrt.json").read_text())
    assert meta["vae_corner_steps"] == 2 and meta["dit_sigmas"] == "mix"


def test_corner_stage_continued_after_a_kill_equals_one_run(tmp_path, monkeypatch):
    """Stage 1b saves its state every `save_every` steps; killed after step 3 and run again, it continues from
    step 2's state and ends with the VAE, losses and generator draws of a run never stopped (bit for bit); the
    seconds of the earlier run are handed on. A partial past a shorter run's end is refused."""
    from diffusers import AutoencoderKLWan
    from vidrt_dev.sample_data import make_dataset

    train = _load_train_module()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        videos = train.to_video_tensor(make_dataset(6, seed=3, frames=5, height=16, width=16)[0])
        torch.manual_seed(0)
        start = AutoencoderKLWan(**train.VAE_CONFIG).state_dict()

        def vae():
            model = AutoencoderKLWan(**train.VAE_CONFIG)
            model.load_state_dict(start)
            return model

        whole = vae()
        losses, earlier = train.train_vae_corners(whole, videos, 4, 0, 10, clips=1, frames=2)
        assert earlier == 0 and len(losses) == 4
        partial = tmp_path / "corners.partial.pt"
        real, calls = train.apply_gradients, []

        def killed_at_step_3(*args):
            calls.append(1)
            if len(calls) == 3:
                raise KeyboardInterrupt
            real(*args)

        monkeypatch.setattr(train, "apply_gradients", killed_at_step_3)
        with pytest.raises(KeyboardInterrupt):
            train.train_vae_corners(vae(), videos, 4, 0, 10, clips=1, frames=2, partial=partial, save_every=2)
        monkeypatch.setattr(train, "apply_gradients", real)
        assert torch.load(partial)["step"] == 2
        with pytest.raises(SystemExit, match="at step 2, not before --vae-corner-steps 2"):
            train.train_vae_corners(vae(), videos, 2, 0, 10, clips=1, frames=2, partial=partial)
        resumed = vae()
        again, earlier = train.train_vae_corners(resumed, videos, 4, 0, 10, clips=1, frames=2, partial=partial,
                                                 save_every=2)
    finally:
        torch.set_num_threads(threads)
    assert again == losses and earlier > 0
    for name, value in whole.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[name]), name


def test_generated_latents_are_the_transformer_samples_the_vae_decodes():
    """Stage 4b's generated latents: one native-length latent clip per caption, un-normalised with the VAE's
    statistics (so `vae.decode` takes them as WanPipeline's output), the same for a seed and not across seeds."""
    train = _load_train_module()
    comps = train.build_components(0)
    comps["vae"].register_to_config(latents_mean=[0.5] * 16, latents_std=[2.0] * 16)
    for m in ("vae", "transformer", "text_encoder"):
        comps[m].eval()
    a, b, c = (train.generated_latents(comps, 3, seed, steps=2) for seed in (7, 7, 8))
    assert a.shape == (3, 16, (train.FRAMES - 1) // 4 + 1, train.HEIGHT // 4, train.WIDTH // 4)
    assert torch.equal(a, b) and not torch.allclose(a, c)
    # un-normalised: a random-init transformer's output stays near N(0, 1) in the normalised space
    assert abs(a.mean().item() - 0.5) < 0.5 and 1.0 < a.std().item() < 4.0


def test_stage_4_terms_move_the_vae_and_are_recorded(tmp_path):
    """`--long-native-clips/-frames` and `--long-generated` add their losses to stage 4 (the VAE comes out other
    than without them, the transformer the same) and the metadata names them."""
    from diffusers import WanPipeline

    train = _load_train_module()
    threads = torch.get_num_threads()
    terms = ["--long-native-clips", "1", "--long-native-frames", "2", "--long-generated", "2",
             "--long-generated-batch", "3"]
    try:
        train.main(["--quick", "--out", str(tmp_path / "plain")])
        train.main(["--quick", *terms, "--out", str(tmp_path / "terms")])
    finally:
        torch.set_num_threads(threads)
    a, b = (WanPipeline.from_pretrained(str(tmp_path / n), torch_dtype=torch.float32) for n in ("plain", "terms"))
    sa, sb = a.transformer.state_dict(), b.transformer.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    va, vb = a.vae.state_dict(), b.vae.state_dict()
    assert not all(torch.equal(va[k], vb[k]) for k in va)
    long = json.loads((tmp_path / "terms" / "vidrt.json").read_text())["long"]
    assert (long["native_clips"], long["native_frames"], long["generated"], long["generated_batch"]) == (1, 2, 2, 3)
    assert "long_whole" in long
    assert "generated" not in json.loads((tmp_path / "plain" / "vidrt.json").read_text())["long"]


def test_stage_4_from_a_saved_model_changes_only_the_vae(tmp_path):
    """`--from` runs the long-video stage alone: the transformer and text encoder stay bit-identical and so does the
    latent normalisation they were trained with; the VAE's weights move."""
    from diffusers import WanPipeline

    train = _load_train_module()
    threads = torch.get_num_threads()
    try:
        train.main(["--quick", "--no-long", "--out", str(tmp_path / "base")])
        train.main(["--quick", "--from", str(tmp_path / "base"), "--out", str(tmp_path / "long")])
    finally:
        torch.set_num_threads(threads)
    base, long = (WanPipeline.from_pretrained(str(tmp_path / n), torch_dtype=torch.float32) for n in ("base", "long"))
    for name in ("transformer", "text_encoder"):
        a, b = getattr(base, name).state_dict(), getattr(long, name).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), name
    assert base.vae.config.latents_mean == long.vae.config.latents_mean
    assert base.vae.config.latents_std == long.vae.config.latents_std
    a, b = base.vae.state_dict(), long.vae.state_dict()
    assert not all(torch.equal(a[k], b[k]) for k in a)
    meta = json.loads((tmp_path / "long" / "vidrt.json").read_text())
    assert meta["base_model"]["from"] == str(tmp_path / "base") and "long" in meta
    assert "long" not in json.loads((tmp_path / "base" / "vidrt.json").read_text())


def test_stages_run_apart_give_the_model_of_one_run(tmp_path):
    """The parallel recipe (stage 1, then stages 3 and 4 as separate processes sharing a cache, then assembly) writes
    bit-for-bit the model of a single run: stage 4 depends on stages 1-2 only."""
    from diffusers import WanPipeline

    train = _load_train_module()
    threads = torch.get_num_threads()
    cache = str(tmp_path / "cache")
    try:
        train.main(["--quick", "--out", str(tmp_path / "one")])
        for stage in ("vae", "long", "dit", "all"):
            train.main(["--quick", "--cache", cache, "--stage", stage, "--out", str(tmp_path / "apart")])
    finally:
        torch.set_num_threads(threads)
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["dit.pt", "long_vae.pt", "long_whole.pt",
                                                                      "stage12.pt"]
    one, apart = (WanPipeline.from_pretrained(str(tmp_path / n), torch_dtype=torch.float32) for n in ("one", "apart"))
    for name in ("vae", "transformer", "text_encoder"):
        a, b = getattr(one, name).state_dict(), getattr(apart, name).state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    assert one.vae.config.latents_std == apart.vae.config.latents_std


@pytest.fixture(scope="module")
def renders():
    from diffusers import WanPipeline

    meta = json.loads((MODEL / "vidrt.json").read_text())
    pipe = WanPipeline.from_pretrained(str(MODEL), torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    out = []
    for prompt, seed in PROMPTS:
        video = pipe(prompt=prompt, negative_prompt="", num_frames=meta["native_frames"], height=meta["height"],
                     width=meta["width"], num_inference_steps=STEPS, guidance_scale=GUIDANCE,
                     generator=torch.Generator("cpu").manual_seed(seed), output_type="np",
                     max_sequence_length=meta["max_sequence_length"]).frames
        out.append((prompt, np.asarray(video)))
    return meta, out


def test_shipped_model_files():
    meta = json.loads((MODEL / "vidrt.json").read_text())
    assert meta["family"] == "wan" and meta["trained_by"] == "samples/train_tiny.py"
    assert (meta["native_frames"] - 1) % 4 == 0
    files = [f for f in MODEL.rglob("*") if f.is_file()]
    assert sum(f.stat().st_size for f in files) <= 30e6
    assert not [f for f in files if f.suffix in (".bin", ".pt", ".pth", ".ckpt")]


def test_shipped_model_renders_native_shape(renders):
    meta, out = renders
    for _, video in out:
        assert video.shape == (1, meta["native_frames"], meta["height"], meta["width"], 3)
        assert np.isfinite(video).all()


# The shipped model renders all three colours and directions here (v3 rendered the yellow circle on magenta red: it
# was a strict xfail, and XPASSed once v4 shipped). Over 16 prompts it is not perfect
# (bench/results/sample_quality.md), so the cases stay three, each its own test.
@pytest.mark.parametrize("index", [0, 1, 2], ids=["red", "green", "yellow"])
def test_shipped_model_follows_prompt_colour(renders, index):
    prompt, video = renders[1][index]
    colour = q.blob_colour(video[0])
    assert colour == parse_caption(prompt)["colour"], (prompt, colour)


def test_shipped_model_follows_prompt_direction(renders):
    _, out = renders
    got = [(prompt, q.motion_direction(video[0]), q.direction_cosine(video[0], parse_caption(prompt)["direction"]))
           for prompt, video in out]
    # left/right prompts: the blob centroid must travel the prompted way
    assert all(cos > 0.7 for _, _, cos in got), got


def _shipped_vae_round_trip(videos: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, T, H, W, 3) clips in [0, 1] -> the VAE's input and its encode + decode, both (N, 3, T, H, W) in [-1, 1]."""
    from diffusers import AutoencoderKLWan

    x = torch.from_numpy(videos).permute(0, 4, 1, 2, 3) * 2 - 1
    vae = AutoencoderKLWan.from_pretrained(str(MODEL / "vae")).eval()
    with torch.no_grad():
        return x, vae.decode(vae.encode(x).latent_dist.mean).sample


def test_shipped_vae_holds_a_clip_8x_the_native_length():
    """Issue 18's drift check: the shipped VAE round-trips clips of 8x the native length (the procedural data at
    native speed, wrapping round the frame) without drifting. v3's VAE, trained on 5-9 frames, had a mean squared
    error of 0.43 over the last 9 of 73 frames (0.03 over the first 9) and 0.83 at its worst frame; v4's stayed
    within 0.16 everywhere, v5's within 0.075 (seeds here are not the training clips')."""
    from vidrt_dev.sample_data import make_long_dataset

    meta = json.loads((MODEL / "vidrt.json").read_text())
    frames = 8 * (meta["native_frames"] - 1) + 1
    vids, _ = make_long_dataset(3, seed=4242, frames=frames, pace_frames=meta["native_frames"])
    x, rec = _shipped_vae_round_trip(vids)
    err = (rec - x).pow(2).mean(dim=(0, 1, 3, 4))
    n = meta["native_frames"]
    assert err.max() < 0.25, err
    assert err[-n:].mean() < 3 * err[:n].mean(), err


@pytest.mark.xfail(strict=True, reason="issue 18: the tiny VAE's round trip turns squares and triangles round "
                                       "(bench/results/sample_quality.md); strict, so a VAE that keeps corners "
                                       "shows up here as a pass to claim")
def test_shipped_vae_keeps_corners():
    """Squares and triangles of held-out native clips keep their shape through the VAE's round trip in most
    frames (judged by the bounding-box fill ratio, `vidrt_dev.quality.shape_of`, as sample_quality judges
    renders)."""
    from vidrt_dev.sample_data import make_dataset

    meta = json.loads((MODEL / "vidrt.json").read_text())
    vids, caps = make_dataset(24, seed=4343, frames=meta["native_frames"])
    keep = [i for i, c in enumerate(caps) if parse_caption(c)["shape"] != "circle"]
    _, rec = _shipped_vae_round_trip(vids[keep])
    frames = ((rec.permute(0, 2, 3, 4, 1).numpy() + 1) / 2).clip(0, 1)
    right = [q.shape_of(m) == parse_caption(caps[i])["shape"]
             for i, video in zip(keep, frames) for m in q.blob_masks(video)]
    assert len(keep) >= 8 and np.mean(right) >= 0.5, np.mean(right)
