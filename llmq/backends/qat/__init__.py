"""Quantization-aware training as one plugin: ``config`` (the scheme's config and torchao base
configs), ``convert`` (fake quantization on, export off), ``train`` (the training loop and its
checkpoints), ``plugin`` (the ``qat-*`` schemes). The ``llmq.qat`` entry point is a pipeline
(``llmq.pipeline.qat``)."""
