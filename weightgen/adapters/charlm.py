"""``char-lm``: a small character-level language model, the base that adapters adapt.

It is a ``transformers`` ``LlamaForCausalLM`` at toy size (a vocabulary of letters, a few layers,
``d_model`` 64), so the base is a standard model: written with ``save_pretrained`` it loads with
``AutoModelForCausalLM.from_pretrained`` and its adapters with ``PeftModel.from_pretrained``, with no
weightgen code. Its projections are plain ``nn.Linear`` with Llama's names (``q_proj``, ``k_proj``,
``v_proj``, ``o_proj``, ``gate_proj``, ``up_proj``, ``down_proj``), which peft's ``target_modules``
select. Built by the nets registry as ``factory(input_shape, num_classes)``: ``input_shape`` is
``(sequence length,)`` and ``num_classes`` the alphabet's size. Its forward returns transformers'
output; ``logits`` takes the ``(B, T, vocab)`` tensor from it.
"""
from __future__ import annotations

import torch
from torch import nn

from weightgen.nets.registry import NETS


def logits(output) -> torch.Tensor:
    """The ``(B, T, vocab)`` logits of a language model's forward output (a tensor or transformers' output)."""
    return output if isinstance(output, torch.Tensor) else output.logits


@NETS.register("char-lm")
def char_lm(input_shape, num_classes: int, d_model: int = 64, layers: int = 2, heads: int = 4) -> nn.Module:
    """A ``layers``-block Llama over ``num_classes`` symbols, for sequences of ``input_shape[0]`` of them."""
    from transformers import LlamaConfig, LlamaForCausalLM

    if len(input_shape) != 1:
        raise ValueError(f"char-lm reads sequences of symbols: input_shape must be (length,), got {tuple(input_shape)}")
    if d_model % heads:
        raise ValueError(f"char-lm: d_model ({d_model}) must be a multiple of heads ({heads})")
    config = LlamaConfig(vocab_size=num_classes, hidden_size=d_model, intermediate_size=4 * d_model,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                         max_position_embeddings=int(input_shape[0]), tie_word_embeddings=False,
                         bos_token_id=None, eos_token_id=None, pad_token_id=None)
    return LlamaForCausalLM(config).eval()
