"""laser-rl: GRPO + LaSeR (last-token self-rewarding) for Hugging Face causal language models."""

__version__ = "0.1.0"
