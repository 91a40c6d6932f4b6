"""Evaluation: what quantization cost, measured the way the field measures it."""
