"""Layer 2: the render/profile request. schema.py (the keys, their bounds, the family rules), loading.py (YAML,
`--set` overrides, one-line errors, paths beside the config), checks.py (what is refused before any model
loads). Nothing here imports torch."""
from vidrt.config.checks import check_request, model_path_places
from vidrt.config.loading import load_config, parse_config, set_override
from vidrt.config.schema import (AccelerationConfig, LongConfig, MemoryConfig, ModelConfig, OutputConfig,
                                 RenderConfig, SlicingChunks)

__all__ = ["AccelerationConfig", "LongConfig", "MemoryConfig", "ModelConfig", "OutputConfig", "RenderConfig",
           "SlicingChunks", "check_request", "load_config", "model_path_places", "parse_config", "set_override"]
