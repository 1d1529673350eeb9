"""Parameters <-> tokens (one tokenizer for every generator)."""
from .tokenizer import FLAT, Segment, Tokenizer, TokenizerError, select_names

__all__ = ["Tokenizer", "TokenizerError", "Segment", "select_names", "FLAT"]
