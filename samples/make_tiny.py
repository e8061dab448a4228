"""Save tiny random-init pipelines of every family as real diffusers folders, plus a conditioning image.

The sample configs `samples/*-random.yaml` point at these folders so `vidrt render` exercises the real
`from_pretrained` path offline. Reproducible: `python samples/make_tiny.py` rewrites identical weights.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from vidrt.models import get_adapter
from vidrt_dev.images import conditioning_image

HERE = Path(__file__).resolve().parent
FOLDERS = {
    "tiny-random-wan": ("wan", {}),
    "tiny-random-wan-i2v": ("wan", {"with_image": True}),
    "tiny-random-wan22-a14b": ("wan", {"variant": "2.2-a14b"}),      # two experts, boundary_ratio 0.875
    "tiny-random-wan22-ti2v": ("wan", {"variant": "2.2-ti2v"}),      # per-token timesteps, 16x VAE
    "tiny-random-animatediff": ("animatediff", {}),
    "tiny-random-i2vgen-xl": ("i2vgen-xl", {}),
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=HERE)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for folder, (family, kwargs) in FOLDERS.items():
        pipe = get_adapter(family).tiny(args.seed, **kwargs)
        target = args.out / folder
        pipe.save_pretrained(target, safe_serialization=True)
        (target / "vidrt.json").write_text(json.dumps(
            {"family": family, "random_init": True, "seed": args.seed, "made_by": "samples/make_tiny.py"},
            indent=2) + "\n")
        print(f"saved {target}")
    conditioning_image().save(args.out / "cond.png")
    print(f"saved {args.out / 'cond.png'}")


if __name__ == "__main__":
    main()
