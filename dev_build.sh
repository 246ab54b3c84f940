#!/usr/bin/env bash
# Developer build: compiles the extension into build/dev and copies it next to the Python sources,
# so `PYTHONPATH=python python ...` uses it without reinstalling. Users run `pip install .`.
# Needs what pyproject.toml's `dev` extra lists (ninja, cmake, pybind11, ...). No LTO (NDLM_DEV_BUILD): a one-file change recompiles and relinks in seconds.
set -euo pipefail
cd "$(dirname "$0")"
cmake -S . -B build/dev -G Ninja -DSKBUILD_PROJECT_NAME=ndlm_sk -DCMAKE_BUILD_TYPE=Release -DNDLM_DEV_BUILD=ON \
  -Dpybind11_DIR="$(python -m pybind11 --cmakedir)" -DPython_EXECUTABLE="$(command -v python)" > /dev/null
cmake --build build/dev
# copy then rename: processes that have the old module loaded keep their (unlinked) file
for f in build/dev/_core*.so; do cp "$f" "python/ndlm_sk/.tmp_$(basename "$f")"; mv -f "python/ndlm_sk/.tmp_$(basename "$f")" "python/ndlm_sk/$(basename "$f")"; done
