"""prm: run prime-rl reinforcement-learning experiments on Modal's serverless GPUs."""

__version__ = "0.1.0"
