#!/usr/bin/env bash
# Builds cpp/tests/kernel_check (the CMake target behind -DNDLM_BUILD_KERNEL_CHECK=ON, same kernel
# objects and flags as the extension) and runs its correctness checks on every SIMD level this CPU
# has. Exits non-zero on any failure. Usage: .ci/kernel_check.sh [build dir, default build/kc]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-build/kc}
GEN=()
if command -v ninja > /dev/null; then GEN=(-G Ninja); fi
cmake -S . -B "$OUT" "${GEN[@]}" -DSKBUILD_PROJECT_NAME=ndlm_sk -DCMAKE_BUILD_TYPE=Release -DNDLM_DEV_BUILD=ON \
  -DNDLM_BUILD_KERNEL_CHECK=ON -Dpybind11_DIR="$(python -m pybind11 --cmakedir)" \
  -DPython_EXECUTABLE="$(command -v python)" > /dev/null
cmake --build "$OUT" --target kernel_check -j 2
OMP_NUM_THREADS=2 "$OUT/kernel_check" check
