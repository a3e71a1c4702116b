"""speechfuse: combining speech models trained differently, in JAX/Flax."""

__version__ = "0.1.0"
