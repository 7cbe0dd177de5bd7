#!/usr/bin/env bash
# The whole test suite on a fresh Debian 12 machine: set-up (packages + Release build), then every
# test through ctest: Catch2 unit tests, the PyTorch reference comparison, CLI tests.
# A test that cannot run here reports itself as skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
bash cluster/setup.sh
# OpenMPI refuses to start as root unless told; CI and containers run as root.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
# The CUDA build (-DHYPERRNN_CUDA=ON, docs/gpu.md) wherever the CUDA Toolkit is installed, so that a
# broken GPU build fails the suite; no GPU is needed to build it. Its GPU tests report themselves
# skipped where no GPU is visible.
nvcc=${CUDACXX:-/usr/local/cuda/bin/nvcc}
cuda=0
if [ -x "$nvcc" ]; then
  py=python3
  [ -x /usr/bin/python3 ] && py=/usr/bin/python3
  { cmake -S . -B build-cuda -DCMAKE_BUILD_TYPE=Release -DHYPERRNN_CUDA=ON -DCMAKE_CUDA_COMPILER="$nvcc" -DPython3_EXECUTABLE="$py" &&
    cmake --build build-cuda -j "$(nproc 2>/dev/null || echo 2)" --target hyperrnn hyperrnn_gpu_tests hyperrnn_nccl_tests; } > build-cuda.log 2>&1 ||
    { tail -50 build-cuda.log; echo "run-all: the CUDA build failed (build-cuda.log)"; exit 1; }
  echo "run-all: built build-cuda (HYPERRNN_CUDA=ON, log: build-cuda.log)"
  cuda=1
else
  echo "run-all: no CUDA Toolkit ($nvcc): the CUDA build and its tests are skipped"
fi
status=0
ctest --test-dir build --output-on-failure -j 2 --timeout 900 || status=1
# A site or workplace may force OpenBLAS's kernel (OPENBLAS_CORETYPE); users' runs get the kernel
# OpenBLAS chooses for their CPU, and on an AVX-512 CPU that is another kernel with other bits
# (docs/performance.md). The bitwise tests (thread counts, rank counts, stop and resume) run again
# under OpenBLAS's own choice, so that they cannot pass only under the override.
if [ -n "${OPENBLAS_CORETYPE:-}" ]; then
  echo "run-all: OPENBLAS_CORETYPE=$OPENBLAS_CORETYPE is set; the bitwise tests again under OpenBLAS's own kernel choice"
  env -u OPENBLAS_CORETYPE ctest --test-dir build --output-on-failure -j 2 --timeout 900 -R 'bitwise|^pytest: mpi$' || status=1
fi
if [ "$cuda" = 1 ]; then
  ctest --test-dir build-cuda --output-on-failure --timeout 900 -R '^(gpu: |pytest: device$)' || status=1
fi
exit "$status"
