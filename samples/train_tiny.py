"""Train the tiny Wan 2.1 text-to-video sample model shipped in samples/tiny-wan/.

Real diffusers/transformers classes, tiny configs:
  AutoencoderKLWan (3 levels: 4x spatial, 4x temporal compression) + WanTransformer3DModel (6 blocks)
  + UMT5EncoderModel (2 layers) + in-memory word tokenizer (`word_tokenizer(style="t5")`)
  + FlowMatchEulerDiscreteScheduler, assembled into a `diffusers.WanPipeline`.

Data: `vidrt_dev.sample_data` (procedural coloured shapes moving on plain backgrounds, captions
"a {colour} {shape} moves {direction} on a {colour} background"), deterministic from a seed.

Stages:
  1. VAE: trained as a deterministic autoencoder on the posterior mean (MSE + tiny latent L2) on procedural clips.
  2. Latent statistics: per-channel mean/std of the dataset latents, written into the VAE config
     (`latents_mean` / `latents_std`), exactly as WanPipeline un-normalises them before decoding.
  3. Transformer + text encoder: rectified-flow matching as WanPipeline's scheduler expects:
     x_t = (1 - s) x0 + s noise, target v = noise - x0, transformer timestep = s * 1000.
     Text embeddings are zero-padded to TEXT_TOKENS exactly as `WanPipeline._get_t5_prompt_embeds` pads them
     to max_sequence_length at inference. 10 % caption dropout to "" for classifier-free guidance.

Usage:
  python samples/train_tiny.py                 # full run, writes samples/tiny-wan/ (~100 min on one core)
  # the shipped model: stages 1-2 once (19 min), then 2b (16 min) and 3 (9000 steps, 61 min on a shared core)
  # as parallel processes on 2 cores (~80 min wall):
  #   python samples/train_tiny.py --cache C --stage dit &  (after stage12.pt exists)
  #   python samples/train_tiny.py --cache C --stage decoder; wait; python samples/train_tiny.py --cache C
  python samples/train_tiny.py --quick --out /tmp/tiny   # seconds; a few steps on a tiny batch
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
from vidrt_dev.sample_data import GRAMMAR, make_dataset  # noqa: E402

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


def train_vae(vae, videos: torch.Tensor, steps: int, batch: int, lr: float, seed: int, log_every: int):
    # Deterministic autoencoder on the posterior mean (text-to-video never samples the encoder posterior; with
    # sampling the untrained latents drown in noise and the decoder learns to ignore them). A tiny L2 on the
    # latents keeps their scale bounded; per-channel statistics are normalised afterwards anyway.
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
        mse = F.mse_loss(rec, x)
        reg = z.pow(2).mean()
        loss = mse + 1e-4 * reg
        apply_gradients(loss, opt, sched, vae.parameters())
        losses.append(mse.item())
        if step % log_every == 0 or step == 1 or step == steps:
            log(f"vae step {step:5d}  mse {np.mean(losses[-log_every:]):.5f}  z^2 {reg.item():.3f}  "
                f"{(time.time() - t0) / step:.2f}s/step")
    vae.eval()
    return losses


def finetune_decoder(vae, z: torch.Tensor, videos: torch.Tensor, steps: int, batch: int, lr: float, seed: int,
                     log_every: int):
    """Stage 2b: train only post_quant_conv + decoder on the fixed (latent, clip) pairs of the training set.

    The encoder, and so the latent space the transformer learns, is unchanged; the decoder gets more steps on
    full-length clips. Independent of stage 3 given the latents (the two can run as separate processes).
    """
    g = torch.Generator().manual_seed(seed + 7)
    params = list(vae.post_quant_conv.parameters()) + list(vae.decoder.parameters())
    opt, sched = vae_optimiser(params, lr, steps)
    vae.train()
    losses = []
    t0 = time.time()
    for step in range(1, steps + 1):
        idx = torch.randint(len(z), (batch,), generator=g)
        rec = decode_unclamped(vae, z[idx])
        loss = F.mse_loss(rec, videos[idx])
        apply_gradients(loss, opt, sched, params)
        losses.append(loss.item())
        if step % log_every == 0 or step == 1 or step == steps:
            log(f"dec step {step:5d}  mse {np.mean(losses[-log_every:]):.5f}  {(time.time() - t0) / step:.2f}s/step")
    vae.eval()
    return losses


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


def sample_sigmas(n: int, g: torch.Generator) -> torch.Tensor:
    # logit-normal sigmas, then the same shift the scheduler applies at inference
    u = torch.sigmoid(torch.randn(n, generator=g))
    return FLOW_SHIFT * u / (1 + (FLOW_SHIFT - 1) * u)


def train_transformer(transformer, text_encoder, tokenizer, latents: torch.Tensor, captions: list[str], steps: int,
                      batch: int, lr: float, seed: int, log_every: int, cfg_dropout: float = 0.1):
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
        s = sample_sigmas(batch, g).view(-1, 1, 1, 1, 1)
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


# ----------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(ROOT / "samples" / "tiny-wan"))
    ap.add_argument("--quick", action="store_true", help="a few steps on a tiny batch (seconds)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads; 1 is far faster than 2 when the cores are shared (OpenMP spin-waits)")
    ap.add_argument("--vae-clips", type=int, default=512)
    ap.add_argument("--vae-steps", type=int, default=2500)
    ap.add_argument("--vae-batch", type=int, default=4)
    ap.add_argument("--vae-frames", type=int, default=5, help="clip length for VAE training (4k+1)")
    ap.add_argument("--clips", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=9000)
    ap.add_argument("--batch", type=int, default=24)
    ap.add_argument("--lr", type=float, default=6e-4)
    ap.add_argument("--vae-lr", type=float, default=1e-4)
    ap.add_argument("--log-every", type=int, default=50)
    ap.add_argument("--no-save", action="store_true")
    ap.add_argument("--decoder-steps", type=int, default=1500)
    ap.add_argument("--decoder-batch", type=int, default=4)
    ap.add_argument("--cache", default=None,
                    help="dir to save/reuse stage results: stage12.pt (VAE + latents), dit.pt, decoder.pt")
    ap.add_argument("--stage", choices=("all", "dit", "decoder"), default="all",
                    help="with --cache: run only stage 3 (dit) or stage 2b (decoder) and store it in the cache, so "
                         "the two independent stages can run as parallel processes; 'all' reuses what is cached")
    args = ap.parse_args(argv)
    if args.quick:
        args.vae_clips, args.vae_steps, args.vae_batch = 4, 3, 2
        args.clips, args.steps, args.batch, args.log_every = 4, 20, 4, 5
        args.decoder_steps, args.decoder_batch = 2, 2
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    t_start = time.time()

    comps = build_components(args.seed)
    vae, transformer, text_encoder, tokenizer = (comps[k] for k in ("vae", "transformer", "text_encoder", "tokenizer"))
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    log(f"params: vae {n(vae) / 1e6:.2f}M  transformer {n(transformer) / 1e6:.2f}M  "
        f"text_encoder {n(text_encoder) / 1e6:.2f}M")

    cache = Path(args.cache) / "stage12.pt" if args.cache else None
    vids, captions = make_dataset(args.clips, seed=args.seed, frames=FRAMES, height=HEIGHT, width=WIDTH)
    videos = to_video_tensor(vids)
    if cache is not None and cache.exists():
        blob = torch.load(cache)
        vae.load_state_dict(blob["vae"])
        vae.eval()
        z, vae_losses = blob["z"], blob["vae_losses"]
        log(f"reused VAE + latents from {cache}")
    else:
        # 1. VAE
        vae_vids, _ = make_dataset(args.vae_clips, seed=args.seed + 100, frames=args.vae_frames, height=HEIGHT,
                                   width=WIDTH)
        vae_losses = train_vae(vae, to_video_tensor(vae_vids), args.vae_steps, args.vae_batch, args.vae_lr,
                               args.seed, args.log_every)
        log(f"vae done in {time.time() - t_start:.0f}s")
        # 2. latents of the training clips
        z = encode_latents(vae, videos)
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            torch.save({"vae": vae.state_dict(), "z": z, "vae_losses": vae_losses}, cache)
    mean = z.mean(dim=(0, 2, 3, 4))
    std = z.std(dim=(0, 2, 3, 4)).clamp_min(1e-3) if len(z) > 1 else torch.ones_like(mean)
    vae.register_to_config(latents_mean=[round(float(v), 6) for v in mean],
                           latents_std=[round(float(v), 6) for v in std])
    latents = (z - mean.view(1, -1, 1, 1, 1)) / std.view(1, -1, 1, 1, 1)
    with torch.no_grad():
        rec = vae.decode(z[: min(16, len(z))]).sample
        rec_mse = F.mse_loss(rec, videos[: len(rec)]).item()
    log(f"latents {tuple(latents.shape)}  {FRAMES}-frame recon mse {rec_mse:.5f}  ({time.time() - t_start:.0f}s)")

    cdir = Path(args.cache) if args.cache else None
    # 3. transformer + text encoder
    if args.stage in ("all", "dit"):
        if args.stage == "all" and cdir is not None and (cdir / "dit.pt").exists():
            blob = torch.load(cdir / "dit.pt")
            transformer.load_state_dict(blob["transformer"])
            text_encoder.load_state_dict(blob["text_encoder"])
            dit_losses, dit_seconds = blob["losses"], blob["seconds"]
            log(f"reused transformer + text encoder from {cdir / 'dit.pt'}")
        else:
            t0 = time.time()
            dit_losses = train_transformer(transformer, text_encoder, tokenizer, latents, captions, args.steps,
                                           args.batch, args.lr, args.seed, args.log_every)
            dit_seconds = time.time() - t0
            if cdir is not None:
                torch.save({"transformer": transformer.state_dict(), "text_encoder": text_encoder.state_dict(),
                            "losses": dit_losses, "seconds": dit_seconds}, cdir / "dit.pt")
        log(f"stage 3 took {dit_seconds:.0f}s; final loss {np.mean(dit_losses[-args.log_every:]):.4f}")
    # 2b. decoder fine-tune on the fixed latents
    if args.stage in ("all", "decoder"):
        if args.stage == "all" and cdir is not None and (cdir / "decoder.pt").exists():
            blob = torch.load(cdir / "decoder.pt")
            vae.load_state_dict(blob["vae"])
            dec_losses, dec_seconds = blob["losses"], blob["seconds"]
            log(f"reused fine-tuned decoder from {cdir / 'decoder.pt'}")
        else:
            t0 = time.time()
            dec_losses = finetune_decoder(vae, z, videos, args.decoder_steps, args.decoder_batch, args.vae_lr,
                                          args.seed, args.log_every)
            dec_seconds = time.time() - t0
            if cdir is not None:
                torch.save({"vae": vae.state_dict(), "losses": dec_losses, "seconds": dec_seconds},
                           cdir / "decoder.pt")
        with torch.no_grad():
            rec = vae.decode(z[: min(16, len(z))]).sample
            rec_mse = F.mse_loss(rec, videos[: len(rec)]).item()
        log(f"stage 2b took {dec_seconds:.0f}s; {FRAMES}-frame recon mse {rec_mse:.5f}")
    if args.stage != "all":
        return {}

    result = dict(vae_losses=vae_losses, dit_losses=dit_losses, recon_mse=rec_mse, decoder_losses=dec_losses,
                  train_seconds=time.time() - t_start)
    if not args.no_save:
        save(comps, args.out, args, result)
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
        "seed": args.seed,
        "quick": bool(args.quick),
        "train_steps": args.steps,
        "vae_steps": args.vae_steps,
        "decoder_steps": args.decoder_steps,
        "final_loss": round(float(np.mean(result["dit_losses"][-args.log_every:])), 5),
        "vae_recon_mse": round(result["recon_mse"], 6),
        "train_seconds": round(result["train_seconds"], 1),
    }
    (out_p / "vidrt.json").write_text(json.dumps(meta, indent=2) + "\n")
    size = sum(f.stat().st_size for f in out_p.rglob("*") if f.is_file())
    log(f"saved {out_p} ({size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
