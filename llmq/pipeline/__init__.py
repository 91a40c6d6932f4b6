"""The pipelines: quantize -> evaluate -> save -> publish in one call (``run``), the search over
schemes (``auto``) and quantization-aware training (``qat``). They sit above the library layers and
below the CLI."""
