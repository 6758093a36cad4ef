"""Training and evaluation of MIL models (so far: the losses)."""
