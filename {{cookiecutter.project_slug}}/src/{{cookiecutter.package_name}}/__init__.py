"""LoRA / QLoRA fine-tuning pipeline: prepare -> train -> evaluate. See README.md."""

__version__ = "0.1.0"
