"""Train the tiny Wan 2.1 text-to-video sample model shipped in samples/tiny-wan/.

Real diffusers/transformers classes, tiny configs:
  AutoencoderKLWan (3 levels: 4x spatial, 4x temporal compression) + WanTransformer3DModel (6 blocks)
  + UMT5EncoderModel (2 layers) + in-memory word tokenizer (`word_tokenizer(style="t5")`)
  + FlowMatchEulerDiscreteScheduler, assembled into a `diffusers.WanPipeline`.

Data: `vidrt_dev.sample_data` (procedural coloured shapes moving on plain backgrounds, captions
"a {colour} {shape} moves {direction} on a {colour} background"), deterministic from a seed.

Stages:
  1. VAE: trained as a deterministic autoencoder on the posterior mean (MSE + tiny latent L2) on native-length
     procedural clips, the object's pixels weighted (`train_vae`).
  1b. (`--vae-corner-steps`, off in v5) the VAE continued on mixed clip + single-frame batches with the object's
     outline weighted, so it draws corners (`train_vae_corners`); stage 2 then encodes with it.
  2. Latent statistics: per-channel mean/std of the dataset latents, written into the VAE config
     (`latents_mean` / `latents_std`), exactly as WanPipeline un-normalises them before decoding.
  3. Transformer + text encoder: rectified-flow matching as WanPipeline's scheduler expects:
     x_t = (1 - s) x0 + s noise, target v = noise - x0, transformer timestep = s * 1000.
     Text embeddings are zero-padded to TEXT_TOKENS exactly as `WanPipeline._get_t5_prompt_embeds` pads them
     to max_sequence_length at inference. 10 % caption dropout to "" for classifier-free guidance.
  4. Long videos (`train_long`): the whole VAE on clips that keep a native clip's speed on a torus
     (`vidrt_dev.sample_data.make_long_dataset`): (a) 33-frame clips, (b) 73-frame clips (8x native), the object's
     pixels weighted 4x, its latents of each clip's first 9 frames held near the stage-1 VAE's, so the transformer
     and the latent statistics stay as they are. Stage 4 needs only stages 1-2, so it can run beside stage 3.
     Off in v5: stage 1b's loss on native clips and frames kept in every step (`--long-native-*`) and, in (b),
     the decoding of the transformer's own samples held to the pre-stage-4 VAE's (`--long-generated`; stage 4
     then needs stage 3).

History: v3 was stages 1-3 with a VAE trained 2500 steps on 5-frame clips plus a decoder-only fine-tune on
9-frame clips; v4 added stage 4 to it. v5 trains stage 1 far longer on 9-frame clips (see `train_vae`: v3's VAE
turned squares and triangles into circles in its own round trip) and retrains stage 3 on its latents.
v6 was tried twice and not shipped (stages 1b, `--dit-sigmas mix`, 4000 clips, 12000 steps, then stage 4). Run as
v5's, stage 4 doubled the corner VAE's native round-trip error (0.0016 -> 0.0031) and darkened the core of the
objects the transformer draws. Kept as options, measured (bench/sample_quality.py, 16 held-out cases right in
colour, shape and direction; bench/long_video.py, object colour per frame of 8x renders with decode windows;
v5: 0.375, 0.75): 2+8 native clips/frames a step, 4a only (no 4b) 0.562 / 0.74 (clean renders, but the 73-frame
round trip drifts: last 9 frames 0.31, v5 0.06); 4+16 native clips/frames, 4a only 0.625 / 0.78 (drift 0.37);
with 4b 0.562 / 0.79 (drift 0.05, but cores darken again: worst clip's colour right in 0.56 of its frames, v5
0.89); 4b at 450 steps with 64 generated clips 0.625 / 0.65 (drift 0.08); at 900 steps 0.50 / 0.79 (drift
0.07, worst clip's colour 0.44: a black triangle drawn blue); 128 generated clips, 8 a step
(`--long-generated-batch`) 0.50 / 0.77 (drift 0.07, worst clip 0.67). None beat v5 everywhere, and every v6
transformer draws the default prompt's red circle boxy: stage 1b's corners (round trip of squares and triangles
right in 0.45 of frames before stage 4, v5 0.04) were still rising at 7500 steps, so its next try is a longer 1b,
which continues from its `corners.partial.pt` when stopped.

Usage:
  python samples/train_tiny.py                 # the shipped model: stages 1-4, writes samples/tiny-wan/
  # as parallel processes on 2 cores (stage 1 ~50 min, then stages 3 and 4 side by side ~60 min):
  #   python samples/train_tiny.py --cache C --stage vae
  #   python samples/train_tiny.py --cache C --stage dit & python samples/train_tiny.py --cache C --stage long; wait
  #   python samples/train_tiny.py --cache C       # reuses all four, writes the model
  python samples/train_tiny.py --no-long --out /tmp/base   # stages 1-3 only
  python samples/train_tiny.py --from /tmp/base --cache L  # stage 4 only, from a saved model
  python samples/train_tiny.py --quick --out /tmp/tiny     # seconds; a few steps of every stage on a tiny batch
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from vidrt.models.tokenizers import word_tokenizer  # noqa: E402
from vidrt_dev.sample_data import GRAMMAR, make_dataset, make_long_dataset  # noqa: E402

FRAMES, HEIGHT, WIDTH, FPS = 9, 32, 32, 8
# Captions are 9 words + </s>. The tokenizer's model_max_length is saved as TEXT_TOKENS, and vidrt's Wan adapter
# passes min(512, model_max_length) as WanPipeline's max_sequence_length, so inference zero-pads the prompt
# embeddings to exactly the length the model was trained with (a model trained at one padding length and run
# at another sees a different softmax mass on the zero tokens in every cross-attention).
TEXT_TOKENS = 16

VAE_CONFIG = dict(
    base_dim=16, z_dim=16, dim_mult=[1, 2, 2], num_res_blocks=1, attn_scales=[],
    temperal_downsample=[True, True], scale_factor_temporal=4, scale_factor_spatial=4,
    latents_mean=[0.0] * 16, latents_std=[1.0] * 16,
)
TRANSFORMER_CONFIG = dict(
    patch_size=(1, 2, 2), num_attention_heads=4, attention_head_dim=32, in_channels=16, out_channels=16,
    text_dim=64, freq_dim=64, ffn_dim=256, num_layers=6, cross_attn_norm=True,
    qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024,
)
TEXT_CONFIG = dict(
    d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4, relative_attention_num_buckets=32,
    relative_attention_max_distance=64, feed_forward_proj="gated-gelu", dropout_rate=0.0,
    is_encoder_decoder=False, use_cache=False, tie_word_embeddings=False,
)
FLOW_SHIFT = 3.0
# Stage 4b's steps and learning rate: chosen between two runs side by side, see train_long.
LONG_STEPS, LONG_LR = 900, 1e-4
# Stage 1's weight on the object's pixels: chosen between two runs side by side, see train_vae.
VAE_OBJECT_WEIGHT = 4.0
STAGES = ("all", "vae", "dit", "long")
# Long videos decode in re-anchored windows of this many frames (vidrt.models.wan_vae; written into vidrt.json, so
# `long.decode_window: auto` uses it): the stage-4 decoder still drifts over a whole 93-frame sequence (the object's
# colour right in 0.62 of the frames of 8x renders). Measured on the 8x (and 4x) renders of bench/long_video.py's 8
# prompts, the same latents decoded each way: whole 0.62 (0.77); windows of 33 / 37 frames overlapping by 4: 0.75 /
# 0.75 (0.80 / 0.78); 33 overlapping by 8: 0.75 (0.79); 49 by 8: 0.74; the background right in every frame with
# 37 / 4 (whole: 0.99), the largest jump where a window takes over 17.4 against 22.7 elsewhere.
DECODE_WINDOW = {"frames": 37, "overlap": 4}


def log(msg: str) -> None:
    print(msg, flush=True)


def build_components(seed: int = 0):
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    tokenizer = word_tokenizer(style="t5", model_max_length=TEXT_TOKENS)
    torch.manual_seed(seed)
    vae = AutoencoderKLWan(**VAE_CONFIG)
    torch.manual_seed(seed + 1)
    transformer = WanTransformer3DModel(**TRANSFORMER_CONFIG)
    torch.manual_seed(seed + 2)
    text_cfg = UMT5Config(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                          eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=0, **TEXT_CONFIG)
    text_encoder = UMT5EncoderModel(text_cfg)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=FLOW_SHIFT)
    return dict(vae=vae, transformer=transformer, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler)


def to_video_tensor(videos: np.ndarray) -> torch.Tensor:
    """(N, T, H, W, 3) in [0, 1] -> (N, 3, T, H, W) in [-1, 1]."""
    return torch.from_numpy(videos).permute(0, 4, 1, 2, 3).mul(2).sub(1).contiguous()


def vae_training_clips(args) -> torch.Tensor:
    """The native clips stages 1 and 1b train the VAE on (and stage 4's `--long-native-*` terms keep)."""
    vids, _ = make_dataset(args.vae_clips, seed=args.seed + 100, frames=args.vae_frames, height=HEIGHT, width=WIDTH)
    return to_video_tensor(vids)


# ----------------------------------------------------------------------------------------------- stage 1
def apply_gradients(loss: torch.Tensor, opt, sched, params) -> None:
    """One optimiser step with gradient clipping at 1.0 and a scheduler step (every stage trains this way)."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    sched.step()


def decode_unclamped(vae, z: torch.Tensor) -> torch.Tensor:
    """`AutoencoderKLWan._decode` without its final clamp to [-1, 1].

    The clamp has zero gradient wherever the decoder overshoots, so pixels that overshoot early in training
    stay stuck there; training on the unclamped output lets every pixel be pulled back. Inference keeps
    diffusers' clamped decode (targets lie inside [-0.9, 0.9], so the clamp is inactive on a trained model).
    """
    vae.clear_cache()
    x = vae.post_quant_conv(z)
    frames = []
    for i in range(z.shape[2]):
        vae._conv_idx = [0]
        frames.append(vae.decoder(x[:, :, i:i + 1], feat_cache=vae._feat_map, feat_idx=vae._conv_idx,
                                  first_chunk=(i == 0)))
    vae.clear_cache()
    return torch.cat(frames, dim=2)


def vae_optimiser(params, lr: float, steps: int):
    """AdamW at a constant lr, x0.3 for the last 20 % of the steps (both VAE stages). This VAE (RMS norms over
    16-32 channels) needs a small lr: after 150 steps on 5-frame clips, 1e-4 reaches MSE 0.25 while 2e-4
    oscillates at 0.53 and 5e-4 (clamped decode) sits at 0.37; overfitting 8 single frames, 1e-4 reaches 0.05
    in 125 steps while 3e-4 and 1e-3 stall near 0.24."""
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0, betas=(0.9, 0.99))
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 if s < 0.8 * steps else 0.3)


def train_vae(vae, videos: torch.Tensor, steps: int, batch: int, lr: float, seed: int, log_every: int, *,
              object_weight: float = 1.0):
    """Stage 1. Deterministic autoencoder on the posterior mean (text-to-video never samples the encoder posterior;
    with sampling the untrained latents drown in noise and the decoder learns to ignore them). A tiny L2 on the
    latents keeps their scale bounded; per-channel statistics are normalised afterwards anyway.

    v5's recipe, measured side by side from the same initialisation on 48 held-out 9-frame clips (round trip, the
    object's colour judged per clip by `vidrt_dev.quality.blob_colour`): native-length clips, 6000 steps of batch
    4, the object's pixels weighted 4x (`object_weights`). At step 2500 plain MSE (weight 1) and weight 4 reached
    the same MSE (0.050) but the object's colour came out right in 0.58 vs 0.83 of the clips; weight 16 lagged
    far behind on both (step 2000: MSE 0.17 vs 0.066, colour 0.29 vs 0.77). v4's VAE (v3's stage 1 + 2b + stage
    4) on the same clips: MSE 0.061, colour 0.69. None of them draws corners yet: squares and triangles still
    come back round (a single-frame probe at the same size learnt them within ~5000 steps of 16 frames, so the
    clips' VAE is still far from converged; more steps are the next lever)."""
    g = torch.Generator().manual_seed(seed)
    opt, sched = vae_optimiser(vae.parameters(), lr, steps)
    vae.train()
    losses = []
    t0 = time.time()
    for step in range(1, steps + 1):
        idx = torch.randint(len(videos), (batch,), generator=g)
        x = videos[idx]
        z = vae.encode(x).latent_dist.mean
        rec = decode_unclamped(vae, z)
        mse = weighted_mse(rec, x, object_weight)
        reg = z.pow(2).mean()
        loss = mse + 1e-4 * reg
        apply_gradients(loss, opt, sched, vae.parameters())
        losses.append(mse.item())
        if step % log_every == 0 or step == 1 or step == steps:
            log(f"vae step {step:5d}  mse {np.mean(losses[-log_every:]):.5f}  z^2 {reg.item():.3f}  "
                f"{(time.time() - t0) / step:.2f}s/step")
    vae.eval()
    return losses


def object_weights(target: torch.Tensor, weight: float) -> torch.Tensor:
    """Per-pixel loss weights: `weight` on the object (pixels off their frame's border colour), 1 elsewhere. The
    object covers about a tenth of a frame, so a plain MSE lets a decoder trade its colour for the background."""
    border = torch.cat([target[..., 0, :], target[..., -1, :], target[..., :, 0], target[..., :, -1]], dim=-1)
    background = border.median(dim=-1).values[..., None, None]
    on_object = (target - background).abs().amax(dim=1, keepdim=True) > 0.2
    return 1 + (weight - 1) * on_object.float()


def weighted_mse(rec: torch.Tensor, target: torch.Tensor, object_weight: float) -> torch.Tensor:
    """The reconstruction loss of stages 1 and 4: squared error with the object's pixels weighted, normalised by
    the mean weight (so weight 1 is the plain MSE)."""
    w = object_weights(target, object_weight)
    return (w * (rec - target) ** 2).mean() / w.mean()


def edge_weights(target: torch.Tensor, object_weight: float, edge_weight: float) -> torch.Tensor:
    """`object_weights` plus `edge_weight` on the object's outline: every pixel with one to three of its four
    neighbours on the object, and object pixels with none. A corner is a few pixels of a frame, so a squared error
    summed over the frame barely notices a decoder that rounds it; the outline term makes those pixels count."""
    w = object_weights(target, object_weight)
    o = (w > 1).float()
    nb = torch.zeros_like(o)
    nb[..., 1:, :] += o[..., :-1, :]
    nb[..., :-1, :] += o[..., 1:, :]
    nb[..., :, 1:] += o[..., :, :-1]
    nb[..., :, :-1] += o[..., :, 1:]
    return w + edge_weight * ((nb < 4) & ((nb > 0) | (o > 0))).float()


def outline_loss(vae, x: torch.Tensor, object_weight: float, edge_weight: float) -> torch.Tensor:
    """Round-trip error of `x` weighted by `edge_weights`, plus a small pull of the latents towards 0."""
    z = vae.encode(x).latent_dist.mean
    w = edge_weights(x, object_weight, edge_weight)
    return (w * (decode_unclamped(vae, z) - x) ** 2).mean() / w.mean() + 1e-4 * z.pow(2).mean()


def mixed_outline_loss(vae, videos: torch.Tensor, clips: int, frames: int, g: torch.Generator,
                       object_weight: float = 4.0, edge_weight: float = 4.0) -> torch.Tensor:
    """`outline_loss` of `clips` native clips plus that of `frames` single frames of other clips, each encoded
    alone as a clip's first frame (stage 1b's batch; stage 4 keeps it beside its long clips)."""
    x = videos[torch.randint(len(videos), (clips,), generator=g)]
    idx = torch.randint(len(videos), (frames,), generator=g)
    t = torch.randint(videos.shape[2], (frames,), generator=g)
    return (outline_loss(vae, x, object_weight, edge_weight)
            + outline_loss(vae, videos[idx, :, t][:, :, None], object_weight, edge_weight))


def train_vae_corners(vae, videos: torch.Tensor, steps: int, seed: int, log_every: int, *, clips: int = 4,
                      frames: int = 16, lr: float = 1e-4, object_weight: float = 4.0, edge_weight: float = 4.0,
                      partial: Path | None = None, save_every: int = 500):
    """Stage 1b (`--vae-corner-steps`, off in v5): the whole VAE continued on mixed batches - `clips` native clips
    and `frames` single frames of other clips, each encoded alone as a clip's first frame - with the outline
    weighted (`edge_weights`), AdamW at a constant lr.

    Why: v5's VAE rounds every corner in its own round trip, so no transformer trained on its latents can draw a
    square. Probes from v5's stage-1 VAE on 48 held-out clips (squares / triangles right per frame; v5 0.07 / 0.02):
    this recipe 0.13 / 0.00 at 500 steps, 0.39 / 0.21 at 4500, 0.54 / 0.28 at 7500, still rising (MSE 0.0075,
    colour 1.00); the decoder alone, or the whole VAE on clips only, did not move corners (0.10-0.12 / 0.00-0.01
    after 1000-2000 steps) and cost long-video colour; lr 2e-4 or 3e-4 was no faster. Single frames matter: the
    first latent frame of every clip is one frame encoded alone, the frame a render's shape is judged on first.

    `partial`: every `save_every` steps the VAE, the optimiser's moments, the generator's state and the losses are
    written there, and a run that finds the file continues from it - with the same result as a run never stopped
    (the stage runs for hours on one core, longer than a session). Returns (losses, seconds of earlier runs)."""
    g = torch.Generator().manual_seed(seed + 11)
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0, betas=(0.9, 0.99))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    losses, done, before = [], 0, 0.0
    if partial is not None and partial.exists():
        state = torch.load(partial)
        vae.load_state_dict(state["vae"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        g.set_state(state["generator"])
        losses, done, before = list(state["losses"]), state["step"], state["seconds"]
        if done >= steps:    # a partial is a prefix of a longer run (constant lr), never of a shorter one
            raise SystemExit(f"{partial} is at step {done}, not before --vae-corner-steps {steps}: give a fresh "
                             "--cache for a shorter stage 1b")
        log(f"vae corners: continuing {partial} after step {done}")
    vae.train()
    t0 = time.time()
    for step in range(done + 1, steps + 1):
        loss = mixed_outline_loss(vae, videos, clips, frames, g, object_weight, edge_weight)
        apply_gradients(loss, opt, sched, vae.parameters())
        losses.append(loss.item())
        if step % log_every == 0 or step == 1 or step == steps:
            log(f"vae corners step {step:5d}  weighted loss {np.mean(losses[-log_every:]):.5f}  "
                f"{(time.time() - t0) / (step - done):.2f}s/step")
        if partial is not None and step % save_every == 0 and step < steps:
            partial.parent.mkdir(parents=True, exist_ok=True)
            torch.save({"vae": vae.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                        "generator": g.get_state(), "losses": losses, "step": step,
                        "seconds": before + time.time() - t0}, partial.with_suffix(".tmp"))
            partial.with_suffix(".tmp").replace(partial)      # a kill mid-write leaves the previous one
    vae.eval()
    return losses, before


@torch.no_grad()
def encode_latents(vae, videos: torch.Tensor, batch: int = 32) -> torch.Tensor:
    out = []
    for i in range(0, len(videos), batch):
        out.append(vae.encode(videos[i:i + batch]).latent_dist.mean)
    return torch.cat(out)


# ----------------------------------------------------------------------------------------------- stage 3
def encode_text(text_encoder, tokenizer, prompts: list[str]) -> torch.Tensor:
    """As WanPipeline._get_t5_prompt_embeds with max_sequence_length=TEXT_TOKENS: real tokens, then zeros."""
    enc = tokenizer(prompts, padding="max_length", max_length=TEXT_TOKENS, truncation=True,
                    add_special_tokens=True, return_attention_mask=True, return_tensors="pt")
    h = text_encoder(enc.input_ids, enc.attention_mask).last_hidden_state
    return h * enc.attention_mask.unsqueeze(-1).to(h.dtype)


def sample_sigmas(n: int, g: torch.Generator, mode: str = "shift") -> torch.Tensor:
    """shift (v5): logit-normal sigmas, then the same shift the scheduler applies at inference - which leaves
    sigma < 0.3 to about 3 % of the samples, where a sample's edges are settled. mix: half of them uniform in
    [0, 1]. Probe (same VAE, 9-frame renders of held-out clips noised to sigma 0.5 and sampled back): a shift-trained
    transformer fine-tuned 2000 steps with mix kept squares / triangles right in 0.24 of frames against 0.11."""
    u = torch.sigmoid(torch.randn(n, generator=g))
    s = FLOW_SHIFT * u / (1 + (FLOW_SHIFT - 1) * u)
    if mode == "mix":
        s = torch.where(torch.rand(n, generator=g) < 0.5, s, torch.rand(n, generator=g))
    return s


def train_transformer(transformer, text_encoder, tokenizer, latents: torch.Tensor, captions: list[str], steps: int,
                      batch: int, lr: float, seed: int, log_every: int, cfg_dropout: float = 0.1,
                      sigmas: str = "shift"):
    """Rectified-flow training (stage 3)."""
    g = torch.Generator().manual_seed(seed)
    params = list(transformer.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01, betas=(0.9, 0.99))
    warmup = max(1, min(100, steps // 10))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))))
    transformer.train()
    text_encoder.train()
    losses = []
    t0 = time.time()
    for step in range(1, steps + 1):
        idx = torch.randint(len(latents), (batch,), generator=g)
        x0 = latents[idx]
        drop = torch.rand(batch, generator=g) < cfg_dropout
        prompts = ["" if d else captions[i] for i, d in zip(idx.tolist(), drop.tolist())]
        emb = encode_text(text_encoder, tokenizer, prompts)
        noise = torch.randn(x0.shape, generator=g)
        s = sample_sigmas(batch, g, sigmas).view(-1, 1, 1, 1, 1)
        xt = (1 - s) * x0 + s * noise
        pred = transformer(hidden_states=xt, timestep=s.flatten() * 1000, encoder_hidden_states=emb,
                           return_dict=False)[0]
        loss = F.mse_loss(pred, noise - x0)
        apply_gradients(loss, opt, sched, params)
        losses.append(loss.item())
        if step % log_every == 0 or step == 1 or step == steps:
            log(f"dit step {step:5d}  loss {np.mean(losses[-log_every:]):.4f}  lr {sched.get_last_lr()[0]:.2e}  "
                f"{(time.time() - t0) / step:.2f}s/step")
    transformer.eval()
    text_encoder.eval()
    return losses


# ----------------------------------------------------------------------------------------------- long stages
@torch.no_grad()
def generated_latents(comps, n: int, seed: int, steps: int = 25, guidance: float = 5.0) -> torch.Tensor:
    """`n` native-length latents sampled by the trained transformer (Euler on WanPipeline's shifted flow sigmas,
    classifier-free guidance), for captions of held-out clips; un-normalised, as the VAE decodes them."""
    vae, transformer = comps["vae"], comps["transformer"]
    _, captions = make_dataset(n, seed=seed, frames=FRAMES, height=HEIGHT, width=WIDTH)
    emb = encode_text(comps["text_encoder"], comps["tokenizer"], captions)
    unc = encode_text(comps["text_encoder"], comps["tokenizer"], [""] * n)
    g = torch.Generator().manual_seed(seed)
    z = torch.randn((n, vae.config.z_dim, (FRAMES - 1) // 4 + 1, HEIGHT // 4, WIDTH // 4), generator=g)
    sig = torch.linspace(1, 0, steps + 1)[:-1]
    sig = torch.cat([FLOW_SHIFT * sig / (1 + (FLOW_SHIFT - 1) * sig), torch.zeros(1)])
    for a, b in zip(sig[:-1], sig[1:]):
        t = torch.full((n,), float(a) * 1000)
        v = transformer(hidden_states=z, timestep=t, encoder_hidden_states=emb, return_dict=False)[0]
        vu = transformer(hidden_states=z, timestep=t, encoder_hidden_states=unc, return_dict=False)[0]
        z = z + (b - a) * (vu + guidance * (v - vu))
    mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1)
    return z * std + mean


def latent_stats(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mean = z.mean(dim=(0, 2, 3, 4))
    std = z.std(dim=(0, 2, 3, 4)).clamp_min(1e-3) if len(z) > 1 else torch.ones_like(mean)
    return mean, std


def normalise(vae, z: torch.Tensor) -> torch.Tensor:
    """Write z's per-channel statistics into the VAE config (WanPipeline un-normalises with them before decoding)
    and return the normalised latents the transformer learns."""
    mean, std = latent_stats(z)
    vae.register_to_config(latents_mean=[round(float(v), 6) for v in mean],
                           latents_std=[round(float(v), 6) for v in std])
    return (z - mean.view(1, -1, 1, 1, 1)) / std.view(1, -1, 1, 1, 1)


def stage(cdir: Path | None, name: str, run):
    """Run a stage, or reuse its result stored as `cdir/name` (a dict of tensors, losses and seconds)."""
    path = cdir / name if cdir is not None else None
    if path is not None and path.exists():
        log(f"reused {path}")
        return torch.load(path)
    t0 = time.time()
    blob = run()
    blob["seconds"] = time.time() - t0 + blob.pop("earlier_seconds", 0.0)   # a stage continued from a partial
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(blob, path)
    return blob


@torch.no_grad()
def frame_errors(vae, videos: torch.Tensor) -> list[float]:
    """Per-frame reconstruction MSE of `videos` through encode + diffusers' streamed decode (the drift check)."""
    rec = vae.decode(encode_latents(vae, videos, batch=4)).sample
    return [round(float(e), 5) for e in (rec - videos).pow(2).mean(dim=(0, 1, 3, 4))]


def dit_stage(comps, cdir: Path | None, name: str, latents, captions, steps: int, lr: float, seed: int,
              args) -> dict:
    """Train (or reuse `cdir/name`) the transformer + text encoder and load the result into `comps`."""
    transformer, text_encoder, tokenizer = (comps[k] for k in ("transformer", "text_encoder", "tokenizer"))

    def run():
        losses = train_transformer(transformer, text_encoder, tokenizer, latents, captions, steps, args.batch, lr,
                                   seed, args.log_every, sigmas=args.dit_sigmas)
        return {"transformer": transformer.state_dict(), "text_encoder": text_encoder.state_dict(), "losses": losses}

    blob = stage(cdir, name, run)
    transformer.load_state_dict(blob["transformer"])
    text_encoder.load_state_dict(blob["text_encoder"])
    transformer.eval()
    text_encoder.eval()
    return blob


def anchored_vae(vae, ref, videos: torch.Tensor, steps: int, batch: int, lr: float, seed: int, log_every: int, *,
                 anchor: float = 1.0, object_weight: float = 4.0, native: torch.Tensor | None = None,
                 native_clips: int = 0, native_frames: int = 0, generated: torch.Tensor | None = None,
                 generated_target: torch.Tensor | None = None, generated_batch: int = 4):
    """Stage 4: the whole VAE on long clips, the object's pixels weighted, while its latents of each clip's first
    native-length frames are held near `ref`'s (the VAE the transformer learned): the transformer keeps working
    unchanged, and the VAE reconstructs long clips and objects that wrap round the frame's edges.

    Why the whole VAE and not the decoder alone: the v3 encoder was trained on 5-frame clips only, and a decoder
    trained on its latents of long clips (the earlier stage 6) still lost the object's colour after ~10 frames in a
    round trip (0.36 of frames right at 45 frames); trained together, anchored, 900 steps lifted that to 0.45 and
    the background of 4x renders from 0.78 to 0.95 of frames. Unanchored (the earlier stage 4) the latent space
    moved so far that the transformer could not follow it.

    `native` (with `native_clips` / `native_frames`, `--long-native-*`, off in v5): every step also adds stage
    1b's loss on that many native clips and single frames (`mixed_outline_loss`). Why: the anchor holds the
    latents, not the decoded pixels - v6's stage 4 without it doubled the native round trip's error of the
    corner-trained VAE (0.0016 -> 0.0031) and turned the default render's red circle brown over its 9 frames.

    `generated` (`--long-generated`, stage 4b only): latents the transformer sampled (`generated_latents`), whose
    decoding is held to `generated_target` (`ref`'s decoding of them). Why: with the native term, 4a kept renders
    clean, but 4b (73-frame clips) still darkened the core of the objects the transformer draws - latents a round
    trip never produces - while it kept the 8x round trip from drifting (last 9 of 73 frames 0.05 against 0.3-0.4
    without 4b)."""
    g = torch.Generator().manual_seed(seed)
    g_native = torch.Generator().manual_seed(seed + 17)
    std = torch.tensor(ref.config.latents_std).view(1, -1, 1, 1, 1)
    n_lat = (FRAMES - 1) // 4 + 1
    opt, sched = vae_optimiser(vae.parameters(), lr, steps)
    vae.train()
    losses, drifts = [], []
    t0 = time.time()
    for step in range(1, steps + 1):
        x = videos[torch.randint(len(videos), (batch,), generator=g)]
        z = vae.encode(x).latent_dist.mean
        rec = decode_unclamped(vae, z)
        recon = weighted_mse(rec, x, object_weight)
        with torch.no_grad():
            z_ref = ref.encode(x[:, :, :FRAMES]).latent_dist.mean
        drift = (((z[:, :, :n_lat] - z_ref) / std) ** 2).mean()
        loss = recon + anchor * drift
        if native is not None and (native_clips or native_frames):
            loss = loss + mixed_outline_loss(vae, native, native_clips, native_frames, g_native, object_weight)
        if generated is not None:
            pick = torch.randint(len(generated), (generated_batch,), generator=g_native)
            loss = loss + weighted_mse(decode_unclamped(vae, generated[pick]), generated_target[pick], object_weight)
        apply_gradients(loss, opt, sched, vae.parameters())
        losses.append(recon.item())
        drifts.append(drift.item())
        if step % log_every == 0 or step == 1 or step == steps:
            log(f"long vae step {step:5d}  weighted mse {np.mean(losses[-log_every:]):.5f}  latent drift "
                f"{np.mean(drifts[-log_every:]):.4f}  {(time.time() - t0) / step:.2f}s/step")
    vae.eval()
    return losses, drifts


def train_long(comps, args, cdir: Path | None) -> dict:
    """Stage 4 (v4): the VAE on long clips that keep a native clip's speed on a torus (`make_long_dataset`), in two
    parts: (a) `--long-vae-frames` frames, (b) `--long-frames` (8x native). Both whole clips from their start, not
    crops: the causal VAE's feature caches carry a clip's start far into it (20 cached convolutions in the decoder,
    14 in the encoder, each looking 2 frames back; a change of latent frame 0 still moves v3's decoded frame 72), so
    a crop, which starts with empty caches, is not the state the middle of a long clip is in. After (a) alone the
    round trip of 73-frame clips was right up to frame ~35 and drifted after it (per-frame MSE 0.04-0.08, then up
    to 0.8). Part (b) at lr 1e-4: run side by side with 2e-4, its weighted MSE at step 600 was 0.191 against 0.264.
    See `anchored_vae`.

    Measured and dropped (the closing notes of issue 18): the transformer fine-tuned on windows cut from long clips
    (its loss stayed at 0.34, v3 0.145: a window's first latent frame is a clip's first frame at the start and four
    frames anywhere else; vidrt leaves that latent frame of every later window to the window before instead,
    `window_start_latents`), and the decoder alone on whole 73-frame latent sequences (it kept the background but
    not the object's colour). Again on v5 with that first latent frame left out of the loss, as vidrt leaves it to
    the window before: 2000 steps, half native clips and half 3-latent windows of 33-frame clips encoded by v5's VAE,
    lr 1e-4 / 2e-4: the object's colour in 8x renders 0.73 / 0.75 of frames (v5 0.75), and 1x renders of 8 prompts x
    8 seeds right in every frame 54 / 51 of 64 (v5 60), held-out cases right 0.25 / 0.375 (v5 0.375)."""
    import copy

    vae = comps["vae"]
    ref = copy.deepcopy(vae).eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    result = {}

    native = vae_training_clips(args) if args.long_native_clips or args.long_native_frames else None

    def part(name, clips, seed, frames, steps, batch, lr, generated=None, generated_target=None):
        def run():
            vids, _ = make_long_dataset(clips, seed=seed, frames=frames, pace_frames=FRAMES, height=HEIGHT,
                                        width=WIDTH)
            losses, drifts = anchored_vae(vae, ref, to_video_tensor(vids), steps, batch, lr, seed, args.log_every,
                                          anchor=args.anchor, object_weight=args.object_weight, native=native,
                                          native_clips=args.long_native_clips,
                                          native_frames=args.long_native_frames, generated=generated,
                                          generated_target=generated_target,
                                          generated_batch=args.long_generated_batch)
            return {"vae": vae.state_dict(), "losses": losses, "drifts": drifts}

        blob = stage(cdir, name, run)
        vae.load_state_dict(blob["vae"])
        vae.eval()
        result[name.removesuffix(".pt")] = {"losses": blob["losses"], "drifts": blob["drifts"],
                                            "seconds": blob["seconds"]}

    part("long_vae.pt", args.long_vae_clips, args.seed + 300, args.long_vae_frames, args.long_vae_steps,
         args.long_vae_batch, args.vae_lr)
    generated = target = None
    if args.long_generated:     # the transformer's samples, decoded by the VAE before stage 4
        generated = generated_latents(comps, args.long_generated, args.seed + 1200)
        with torch.no_grad():
            target = torch.cat([decode_unclamped(ref, z) for z in generated.split(16)])
    part("long_whole.pt", args.long_clips, args.seed + 600, args.long_frames, args.long_steps, args.long_batch,
         args.long_lr, generated, target)
    check, _ = make_long_dataset(4, seed=args.seed + 900, frames=args.long_frames, pace_frames=FRAMES,
                                 height=HEIGHT, width=WIDTH)
    result["frame_mse"] = frame_errors(vae, to_video_tensor(check))
    log("per-frame recon mse of 4 long clips: " + " ".join(f"{e:.3f}" for e in result["frame_mse"]))
    return result


# ----------------------------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(ROOT / "samples" / "tiny-wan"))
    ap.add_argument("--quick", action="store_true", help="a few steps on a tiny batch (seconds)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads; 1 is far faster than 2 when the cores are shared (OpenMP spin-waits)")
    ap.add_argument("--vae-clips", type=int, default=2000)
    ap.add_argument("--vae-steps", type=int, default=6000)
    ap.add_argument("--vae-batch", type=int, default=4)
    ap.add_argument("--vae-frames", type=int, default=FRAMES, help="clip length for VAE training (4k+1)")
    ap.add_argument("--vae-object-weight", type=float, default=VAE_OBJECT_WEIGHT,
                    help="stage 1: loss weight of the object's pixels (1: plain MSE)")
    ap.add_argument("--vae-corner-steps", type=int, default=0,
                    help="stage 1b: steps of mixed clip + single-frame batches with the outline weighted "
                         "(`train_vae_corners`; 0: none, as v5); cached apart as corners.pt")
    ap.add_argument("--dit-sigmas", choices=("shift", "mix"), default="shift",
                    help="stage 3's noise levels (`sample_sigmas`; shift: as v5)")
    ap.add_argument("--clips", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=9000)
    ap.add_argument("--batch", type=int, default=24)
    ap.add_argument("--lr", type=float, default=6e-4)
    ap.add_argument("--vae-lr", type=float, default=1e-4)
    ap.add_argument("--log-every", type=int, default=50)
    ap.add_argument("--no-save", action="store_true")
    ap.add_argument("--from", dest="from_model", default=None,
                    help="run stage 4 only, from this saved model folder (`--no-long` writes one)")
    ap.add_argument("--no-long", action="store_true", help="stop after stages 1-3 (no long-video stage)")
    ap.add_argument("--anchor", type=float, default=1.0,
                    help="stage 4: weight of the drift of the native-length latents from the VAE's before it")
    ap.add_argument("--object-weight", type=float, default=4.0,
                    help="stage 4: loss weight of the object's pixels (1: plain MSE)")
    ap.add_argument("--long-vae-clips", type=int, default=400)
    ap.add_argument("--long-vae-frames", type=int, default=33, help="stage 4a: whole clips of this length")
    ap.add_argument("--long-vae-steps", type=int, default=900)
    ap.add_argument("--long-vae-batch", type=int, default=2)
    ap.add_argument("--long-clips", type=int, default=500)
    ap.add_argument("--long-frames", type=int, default=73, help="stage 4b: clips 8x the native length")
    ap.add_argument("--long-steps", type=int, default=LONG_STEPS)
    ap.add_argument("--long-batch", type=int, default=1)
    ap.add_argument("--long-lr", type=float, default=LONG_LR)
    ap.add_argument("--long-native-clips", type=int, default=0,
                    help="stage 4: native clips per step kept in stage 1b's loss (`anchored_vae`; 0: none, as v5)")
    ap.add_argument("--long-native-frames", type=int, default=0,
                    help="stage 4: single frames per step kept in stage 1b's loss (0: none, as v5)")
    ap.add_argument("--long-generated", type=int, default=0,
                    help="stage 4b: transformer samples whose decoding is held to the VAE's before stage 4 "
                         "(`anchored_vae`; needs stage 3, so `--stage long` then trains or reuses dit.pt; 0: none)")
    ap.add_argument("--long-generated-batch", type=int, default=4,
                    help="stage 4b: generated samples in each step's hold (its weight against the long clip)")
    ap.add_argument("--cache", default=None,
                    help="dir to save/reuse stage results: stage12.pt (VAE + latents), corners.pt (stage 1b; "
                         "corners.partial.pt while it runs, continued by the next run), "
                         "dit.pt, long_vae.pt, long_whole.pt (a cache holds one recipe: give a fresh dir when "
                         "changing options)")
    ap.add_argument("--stage", choices=STAGES, default="all",
                    help="with --cache: run only stages 1-2 (vae), 3 (dit) or 4 (long) and store them in the cache, "
                         "so 3 and 4 can run as parallel processes once stage12.pt exists; 'all' reuses what is "
                         "cached")
    args = ap.parse_args(argv)
    if args.from_model and args.no_long:
        ap.error("--from runs stage 4 only, --no-long leaves it out: choose one")
    if args.stage != "all" and not args.cache:
        ap.error(f"--stage {args.stage} stores its result in the cache: give --cache")
    if args.quick:
        args.vae_clips, args.vae_steps, args.vae_batch = 4, 3, 2
        args.vae_corner_steps = min(args.vae_corner_steps, 2)
        args.clips, args.steps, args.batch, args.log_every = 4, 20, 4, 5
        args.long_vae_clips, args.long_vae_frames, args.long_vae_steps = 2, 9, 2
        args.long_clips, args.long_frames, args.long_steps = 2, 17, 2
        args.long_native_clips = min(args.long_native_clips, 1)
        args.long_native_frames = min(args.long_native_frames, 2)
        args.long_generated = min(args.long_generated, 2)
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    cdir = Path(args.cache) if args.cache else None
    if args.from_model:
        comps = load_components(args.from_model)
        result = {"base": json.loads((Path(args.from_model) / "vidrt.json").read_text())}
        log(f"stages 1-3 from {args.from_model}")
    else:
        comps = build_components(args.seed)
        result = train_base(comps, args, cdir)
    if args.stage in ("vae", "dit"):
        return result
    if not args.no_long:
        result.update(train_long(comps, args, cdir))
    if args.stage == "long":
        return result
    # compute time of the stages, each on one core, whether run now or reused from the cache (a run that reuses
    # them takes seconds; the stages' own times are what reproducing the model costs)
    result["train_seconds"] = (sum(result.get("stage_seconds", {}).values())
                               + sum(result[k]["seconds"] for k in ("long_vae", "long_whole") if k in result))
    if not args.no_save:
        save(comps, args.out, args, result)
    return result


def load_components(folder: str) -> dict:
    from diffusers import WanPipeline

    pipe = WanPipeline.from_pretrained(folder, torch_dtype=torch.float32)
    return {k: pipe.components[k] for k in ("vae", "transformer", "text_encoder", "tokenizer", "scheduler")}


def train_base(comps, args, cdir: Path | None) -> dict:
    """Stages 1-3. With `--stage long` stage 3 is left out: stage 4 needs only the stage-1 VAE and the latent
    statistics, so the two can run side by side."""
    vae, transformer, text_encoder, tokenizer = (comps[k] for k in ("vae", "transformer", "text_encoder", "tokenizer"))
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    log(f"params: vae {n(vae) / 1e6:.2f}M  transformer {n(transformer) / 1e6:.2f}M  "
        f"text_encoder {n(text_encoder) / 1e6:.2f}M")
    vids, captions = make_dataset(args.clips, seed=args.seed, frames=FRAMES, height=HEIGHT, width=WIDTH)
    videos = to_video_tensor(vids)

    def vae_stage():
        # 1. VAE, 2. latents of the training clips
        losses = train_vae(vae, vae_training_clips(args), args.vae_steps, args.vae_batch, args.vae_lr,
                           args.seed, args.log_every, object_weight=args.vae_object_weight)
        return {"vae": vae.state_dict(), "z": encode_latents(vae, videos), "vae_losses": losses}

    blob = stage(cdir, "stage12.pt", vae_stage)
    vae.load_state_dict(blob["vae"])
    vae.eval()
    vae_seconds = blob["seconds"]
    if args.vae_corner_steps:
        def corner_stage():
            partial = cdir / "corners.partial.pt" if cdir is not None else None
            losses, earlier = train_vae_corners(vae, vae_training_clips(args), args.vae_corner_steps, args.seed,
                                                args.log_every, partial=partial)
            return {"vae": vae.state_dict(), "z": encode_latents(vae, videos), "vae_losses": losses,
                    "earlier_seconds": earlier}

        corners = stage(cdir, "corners.pt", corner_stage)
        if cdir is not None:
            (cdir / "corners.partial.pt").unlink(missing_ok=True)
        vae.load_state_dict(corners["vae"])
        vae.eval()
        blob = {**corners, "vae_losses": list(blob["vae_losses"] or []) + list(corners["vae_losses"] or [])}
        vae_seconds += corners["seconds"]
    latents = normalise(vae, blob["z"])
    with torch.no_grad():
        rec = vae.decode(blob["z"][: min(16, len(blob["z"]))]).sample
    result = {"vae_losses": blob["vae_losses"], "recon_mse": F.mse_loss(rec, videos[: len(rec)]).item(),
              "stage_seconds": {"vae": round(vae_seconds)}}
    log(f"stage 1 took {vae_seconds:.0f}s; {FRAMES}-frame recon mse {result['recon_mse']:.5f}")
    if args.stage in ("all", "dit") or (args.stage == "long" and args.long_generated):   # 4b samples stage 3
        blob = dit_stage(comps, cdir, "dit.pt", latents, captions, args.steps, args.lr, args.seed, args)
        result["dit_losses"] = blob["losses"]
        result["stage_seconds"]["transformer"] = round(blob["seconds"])
        log(f"stage 3 took {blob['seconds']:.0f}s; final loss {np.mean(blob['losses'][-args.log_every:]):.4f}")
    return result


def save(comps, out: str, args, result) -> None:
    from diffusers import WanPipeline

    pipe = WanPipeline(**comps)
    out_p = Path(out)
    pipe.save_pretrained(out_p, safe_serialization=True)
    meta = {
        "family": "wan",
        "native_frames": FRAMES,
        "height": HEIGHT,
        "width": WIDTH,
        "fps": FPS,
        "trained_by": "samples/train_tiny.py",
        "grammar": GRAMMAR,
        "max_sequence_length": TEXT_TOKENS,
        "decode_window": DECODE_WINDOW,
        "seed": args.seed,
        "quick": bool(args.quick),
    }
    if "base" in result:        # stages 1-3 came from a saved model (--from): keep what its metadata says of them
        meta.update({k: result["base"][k] for k in ("train_steps", "vae_steps", "vae_frames", "vae_object_weight",
                                                    "final_loss", "vae_recon_mse", "stage_seconds")
                     if k in result["base"]})
        meta["base_model"] = {"from": args.from_model, "train_seconds": result["base"].get("train_seconds")}
    else:
        meta.update(train_steps=args.steps, vae_steps=args.vae_steps, vae_frames=args.vae_frames,
                    vae_object_weight=args.vae_object_weight,
                    **({"vae_corner_steps": args.vae_corner_steps} if args.vae_corner_steps else {}),
                    **({"dit_sigmas": args.dit_sigmas} if args.dit_sigmas != "shift" else {}),
                    final_loss=round(float(np.mean(result["dit_losses"][-args.log_every:])), 5),
                    vae_recon_mse=round(result["recon_mse"], 6), stage_seconds=result["stage_seconds"])
    if "long_vae" in result:
        mean = lambda xs: round(float(np.mean(xs[-args.log_every:])), 5)  # noqa: E731
        parts = {"long_vae": dict(steps=args.long_vae_steps, clips=args.long_vae_clips, frames=args.long_vae_frames,
                                  batch=args.long_vae_batch, lr=args.vae_lr),
                 "long_whole": dict(steps=args.long_steps, clips=args.long_clips, frames=args.long_frames,
                                    batch=args.long_batch, lr=args.long_lr)}
        meta["long"] = {"anchor": args.anchor, "object_weight": args.object_weight,
                        **({"generated": args.long_generated, "generated_batch": args.long_generated_batch}
                           if args.long_generated else {}),
                        **({"native_clips": args.long_native_clips, "native_frames": args.long_native_frames}
                           if args.long_native_clips or args.long_native_frames else {}),
                        **{name: {**cfg, "final_weighted_mse": mean(result[name]["losses"]),
                                  "final_latent_drift": mean(result[name]["drifts"]),
                                  "seconds": round(result[name]["seconds"])} for name, cfg in parts.items()},
                        "frame_mse": result["frame_mse"]}
    meta["train_seconds"] = round(result["train_seconds"], 1)
    (out_p / "vidrt.json").write_text(json.dumps(meta, indent=2) + "\n")
    size = sum(f.stat().st_size for f in out_p.rglob("*") if f.is_file())
    log(f"saved {out_p} ({size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
