#!/bin/sh
# Builds the kernel test/benchmark harness with the module's flags (not part of the wheel).
#   cpp/tests/build_kernel_check.sh [outdir]   -> <outdir>/kernel_check (default: build/)
set -e
cd "$(dirname "$0")/../.."
OUT=${1:-build}
mkdir -p "$OUT/kc"
CXX=${CXX:-g++}
FLAGS="-std=c++17 -O3 -fopenmp -fno-math-errno -Wall -DNDLM_X86=1 -Icpp"
$CXX $FLAGS -c cpp/layers_ref.cpp -o "$OUT/kc/layers_ref.o" &
$CXX $FLAGS -c cpp/kernels_dispatch.cpp -o "$OUT/kc/kernels_dispatch.o" &
$CXX $FLAGS -c cpp/kernels_generic.cpp -o "$OUT/kc/kernels_generic.o" &
$CXX $FLAGS -mavx2 -mfma -c cpp/kernels_avx2.cpp -o "$OUT/kc/kernels_avx2.o" &
$CXX $FLAGS -mavx512f -mavx512bw -mavx512vl -mavx2 -mfma -c cpp/kernels_avx512.cpp -o "$OUT/kc/kernels_avx512.o" &
$CXX $FLAGS -c cpp/tests/kernel_check.cpp -o "$OUT/kc/kernel_check.o" &
wait
$CXX -fopenmp "$OUT"/kc/*.o -o "$OUT/kernel_check"
echo "built $OUT/kernel_check"
