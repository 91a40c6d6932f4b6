"""GGUF (llama.cpp) as one plugin: ``quantizer`` (config, llama.cpp's converter and quantizer,
importance matrix, Modelfile), ``runtime`` (llama.cpp scoring and speed through llama-cpp-python),
``plugin`` (the ``gguf-*`` schemes)."""
