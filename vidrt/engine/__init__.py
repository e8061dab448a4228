"""Layer 3: what vidrt attaches to a pipeline (slicing, policies, offload, long videos, OOM fallback, VAE, attention, distributed)."""
