"""Layer 5: a render from a config (stages, steps, checkpoints, video files) and the profile/plan commands."""
