"""posttrain: a reproducible post-training pipeline for open-weight LLMs."""

__version__ = "0.1.0"
