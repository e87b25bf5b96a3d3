"""Checkpoint conversion: Hugging Face ``xLSTMForCausalLM`` directories in and out (``hf``), the config
mapping (``hf_config``) and the safetensors directory reader / writer (``safetensors_dir``)."""

from .hf import load_hf, save_hf
from .hf_config import HFConfigError, from_hf_config, to_hf_config
from .safetensors_dir import CheckpointError

__all__ = ["CheckpointError", "HFConfigError", "from_hf_config", "load_hf", "save_hf", "to_hf_config"]
