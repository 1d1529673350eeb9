"""Sparse and quantized networks (``zoo.compress``, ``tokenizer.mask``): magnitude pruning and lottery
tickets (``prune``), per-channel symmetric int8/int4/ternary codes (``quantize``), their compact files
(``store``), the zoo pass (``zoo``) and the projection of made networks into the compressed space (``project``)."""
from .project import keep_largest, project
from .quantize import dequantize, quantize, snap

__all__ = ["dequantize", "keep_largest", "project", "quantize", "snap"]
