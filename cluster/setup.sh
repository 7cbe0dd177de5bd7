#!/usr/bin/env bash
# Fresh Debian 12 machine -> built hyperrnn: installs the Debian packages that are missing (apt, as
# root or through sudo), then configures and builds the Release tree in build/ (binary at
# build/bin/hyperrnn). Idempotent: a second run installs nothing and rebuilds only what changed.
# Leaves out: starting Slurm (cluster/slurm-up.sh) and running anything.
# On systemd machines Debian's packages start munge (and try slurmd/slurmctld, which fail without a
# slurm.conf); cluster/slurm-up.sh works either way.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(
  build-essential cmake pkg-config
  libopenmpi-dev openmpi-bin            # MPI
  libhdf5-openmpi-dev hdf5-tools        # parallel HDF5 1.10 and h5dump/h5ls
  libboost-program-options-dev          # CLI
  catch2                                # unit tests (Catch2 v2)
  libopenblas-dev                       # CBLAS
  zlib1g-dev                            # gzip-compressed IDX files
  libssl-dev                            # SHA-256 of snapshots (OpenSSL libcrypto, SHA-NI accelerated)
  python3 python3-numpy python3-h5py python3-matplotlib python3-pytest python3-torch  # analysis, reference tests
  dataset-fashion-mnist                 # PILF's continual-learning data
  slurm-wlm munge                       # single-node Slurm for the job-script tests (cluster/slurm-up.sh)
  chromium                              # headless browser: the analysis report's test
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  sudo_cmd=()
  [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# Debian's interpreter carries the python3-* modules above; another python3 earlier on PATH
# (pyenv, conda) usually does not.
py=python3
[ -x /usr/bin/python3 ] && py=/usr/bin/python3
jobs=$(nproc 2>/dev/null || echo 2)
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DPython3_EXECUTABLE="$py" > build.log 2>&1 || { cat build.log; exit 1; }
cmake --build build -j "$jobs" >> build.log 2>&1 || { tail -50 build.log; exit 1; }
echo "setup: built build/bin/hyperrnn (log: build.log)"
