"""Bridges to other libraries' training loops; each module imports its library itself, so the core never needs it."""
