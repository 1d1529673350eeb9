"""weightgen: generate neural network weights with diffusion models."""

__version__ = "0.1.0"
