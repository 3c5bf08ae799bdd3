#!/usr/bin/env bash
# Installs edgedistill and everything its stages need, on CPU, from a fresh clone:
#   bash scripts/install.sh                      # then: edgedistill run
#   bash scripts/install.sh --rebuild-llama-cpp  # recompile llama.cpp (e.g. after a CPU change)
# PYTHON picks the interpreter (default python3); run it inside a venv if you prefer one.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
REBUILD=0
[ "${1:-}" = "--rebuild-llama-cpp" ] && REBUILD=1

# 1. torch first, as the CPU build: left to the resolver, a newer torch would pull a CUDA build
#    of several GB. 2.13.0 satisfies the project's range.
if ! "$PY" -c "import torch" 2>/dev/null; then
  "$PY" -m pip install "${TORCH_SPEC:-torch==2.13.0}"
fi

# 2. llama-cpp-python compiles llama.cpp (4-5 minutes on 2 cores). A native build on a CPU with
#    AMX segfaults on the first multi-token decode of a quantized GGUF, so the build names its
#    instruction sets itself, AMX off: AVX2/FMA/F16C, plus the AVX-512 and VNNI sets this CPU
#    reports (/proc/cpuinfo; prompt processing 1.5x faster with them here: 110 vs 73 tok/s for the
#    1.5B teacher). --no-cache-dir: never reuse a wheel built with other flags.
SIMD="-DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON"
CPU_FLAGS=$(grep -m1 '^flags' /proc/cpuinfo 2>/dev/null || true)
for pair in avx512f:GGML_AVX512 avx512_vnni:GGML_AVX512_VNNI avx512_bf16:GGML_AVX512_BF16 \
            avx512vbmi:GGML_AVX512_VBMI avx_vnni:GGML_AVX_VNNI; do
  case " $CPU_FLAGS " in *" ${pair%%:*} "*) SIMD="$SIMD -D${pair#*:}=ON" ;; esac
done
export CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF $SIMD}"
echo "llama.cpp build flags: $CMAKE_ARGS"
LLAMA_SPEC="llama-cpp-python[server]==0.3.36"
if [ $REBUILD = 1 ]; then
  "$PY" -m pip install --no-cache-dir --force-reinstall --no-deps "$LLAMA_SPEC"
  "$PY" -m pip install "$LLAMA_SPEC"
elif ! "$PY" -c "import llama_cpp" 2>/dev/null; then
  "$PY" -m pip install --no-cache-dir "$LLAMA_SPEC"
fi

# 3. OpenSSH server: tests/test_remote_bench.py runs `edgedistill bench --host` against a real sshd
#    on 127.0.0.1 (Debian/Ubuntu package; skipped where apt-get or root is missing).
if ! command -v sshd >/dev/null 2>&1 && [ ! -x /usr/sbin/sshd ]; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    apt-get install -y openssh-server || { apt-get update && apt-get install -y openssh-server; } \
      || echo "openssh-server not installed: the remote bench test will be skipped"
  else
    echo "no sshd and no root apt-get: the remote bench test will be skipped"
  fi
fi

# 4. edgedistill itself, editable, with the test tools.
"$PY" -m pip install -e ".[all]"
"$PY" -m edgedistill.cli --version
