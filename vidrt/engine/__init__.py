"""Layer 3: what vidrt attaches to a pipeline (slicing, policies, offload, fp8 weight storage, long videos, OOM
fallback, VAE, attention, distributed)."""
