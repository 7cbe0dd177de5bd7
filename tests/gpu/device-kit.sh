#!/usr/bin/env bash
# The GPU checks of issue 19 on a lent GPU machine (docs/gpu.md), in two halves:
#
#   bash tests/gpu/device-kit.sh pack   # here: builds build-cuda and packs build-cuda/devicekit/
#   bash tests/gpu/device-kit.sh run    # there: runs the GPU tests from the kit, logs to $OUT
#
# The GPU machine has CUDA 13, cuBLAS and (in PyTorch's wheels) NCCL, but not this project's other
# libraries (OpenMPI, HDF5, OpenBLAS, Boost) and no package registry, so `pack` copies the
# binaries and every shared library they need that is neither the C runtime nor CUDA's into one
# compressed archive (the device tool carries at most 64 MiB); `run` unpacks it and points the
# loader at it. For the device tool: run `pack` here, then `run` there with carry
# ["build-cuda/devicekit"] and a timeout that leaves room for a second try.
# The kernel tests need no MPI start-up; the NCCL test runs as one rank (an isolated OpenMPI
# singleton, its components from the kit). Two ranks need two GPUs and are not run there.
set -uo pipefail
cd "$(dirname "$0")/../.."
kit=build-cuda/devicekit
bins="hyperrnn hyperrnn_gpu_tests hyperrnn_nccl_tests"

pack() {
  set -e
  nvcc=${CUDACXX:-/usr/local/cuda/bin/nvcc}
  cmake -S . -B build-cuda -DCMAKE_BUILD_TYPE=Release -DHYPERRNN_CUDA=ON -DCMAKE_CUDA_COMPILER="$nvcc" > /dev/null
  cmake --build build-cuda -j "$(nproc)" --target $bins > build-cuda.log 2>&1 || { tail -30 build-cuda.log; exit 1; }
  rm -rf "$kit" && mkdir -p "$kit"
  stage=$(mktemp -d)
  mkdir -p "$stage/bin" "$stage/lib"
  for b in $bins; do cp "build-cuda/bin/$b" "$stage/bin/"; done
  # the libraries the binaries need, minus the C runtime (the machine's own is newer) and CUDA's
  for b in $bins; do ldd "build-cuda/bin/$b"; done | awk '$3 ~ /^\// {print $3}' | sort -u |
    grep -Ev '/(libc|libm|libdl|libpthread|librt|libgcc_s|libstdc\+\+|ld-linux[^/]*)\.so|/(libcudart|libcublas|libcublasLt|libnccl)\.so' |
    while read -r lib; do cp -L "$lib" "$stage/lib/"; done
  # OpenMPI's components (MCA plugins) and the libraries they need, for the one-rank NCCL test
  mca=$(dirname "$(find /usr/lib/x86_64-linux-gnu/openmpi -name 'mca_ess_singleton.so' | head -1)")
  cp -rL "$mca" "$stage/mca"
  for so in "$stage"/mca/*.so; do ldd "$so" 2>/dev/null; done | awk '$3 ~ /^\// {print $3}' | sort -u |
    grep -Ev '/(libc|libm|libdl|libpthread|librt|libgcc_s|libstdc\+\+|ld-linux[^/]*)\.so|/(libcudart|libcuda|libcublas|libnccl)\.so' |
    while read -r lib; do [ -e "$stage/lib/$(basename "$lib")" ] || cp -L "$lib" "$stage/lib/"; done
  git rev-parse HEAD > "$stage/commit"
  tar -C "$stage" -cJf "$kit/kit.tar.xz" .
  rm -rf "$stage"
  echo "device-kit: $(du -h "$kit/kit.tar.xz" | cut -f1) in $kit/kit.tar.xz (commit $(git rev-parse --short HEAD))"
}

# 0 passed, 77 skipped (no GPU: says so, never "passed"), anything else failed
verdict() {
  case "$1" in
    0) v="passed" ;;
    77) v="SKIPPED: no GPU for it" ;;
    *) v="FAILED (exit $1)"; status=1 ;;
  esac
}

run() {
  out=${OUT:-/tmp/devicekit-out}
  mkdir -p "$out"
  dir=$(mktemp -d)
  tar -C "$dir" -xJf "$kit/kit.tar.xz" || { echo "device-kit: no kit (run pack first)"; exit 1; }
  # NCCL: the system's, CUDA's, or the one in PyTorch's wheels
  nccl=$( (ldconfig -p 2>/dev/null | awk '/libnccl.so.2/ {print $NF}'; ls /usr/local/cuda/lib64/libnccl.so.2 2>/dev/null;
           python3 -c 'import nvidia.nccl, os; print(os.path.join(list(nvidia.nccl.__path__)[0], "lib", "libnccl.so.2"))' 2>/dev/null) | head -1)
  export LD_LIBRARY_PATH="$dir/lib:${nccl:+$(dirname "$nccl"):}/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
  export OMPI_MCA_mca_base_component_path="$dir/mca" OMPI_MCA_ess_singleton_isolated=1
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
  status=0
  {
    echo "commit $(cat "$dir/commit"); nccl ${nccl:-not found}"
    command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    "$dir/bin/hyperrnn" --version
  } 2>&1 | tee "$out/device.txt"
  echo "== gpu: kernels against the CPU ops" | tee "$out/gpu_tests.txt"
  "$dir/bin/hyperrnn_gpu_tests" 2>&1 | tee -a "$out/gpu_tests.txt"
  rc=${PIPESTATUS[0]}; verdict "$rc"; echo "$v" | tee -a "$out/gpu_tests.txt"
  echo "== gpu: NCCL collectives against MPI on 1 rank" | tee "$out/nccl_tests.txt"
  "$dir/bin/hyperrnn_nccl_tests" 2>&1 | tee -a "$out/nccl_tests.txt"
  rc=${PIPESTATUS[0]}; verdict "$rc"; echo "$v" | tee -a "$out/nccl_tests.txt"
  rm -rf "$dir"
  exit "$status"
}

case "${1:-}" in
  pack) pack ;;
  run) run ;;
  *) echo "usage: bash tests/gpu/device-kit.sh pack|run" >&2; exit 2 ;;
esac
