"""rmpeft: Random Masking and PEFT baselines for causal language models, driven by Hydra configs."""

__version__ = "0.1.0"
