#!/usr/bin/env bash
# The whole test suite on a fresh Debian 12 machine: set-up (packages + Release build), then every
# test through ctest: Catch2 unit tests, the PyTorch reference comparison, CLI tests.
# A test that cannot run here reports itself as skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
bash cluster/setup.sh
# OpenMPI refuses to start as root unless told; CI and containers run as root.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
ctest --test-dir build --output-on-failure -j 2 --timeout 900
