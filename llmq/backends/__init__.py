"""Quantization backends. Each module imports its heavy package inside methods only."""
