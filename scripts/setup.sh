#!/usr/bin/env bash
# Makes .venv with the runtime, the export and the test tools. torch goes in first, pinned, so that
# the export extra finds it satisfied instead of pulling a multi-GB CUDA build.
# Elsewhere than this project's machines, point TORCH_INDEX_URL at https://download.pytorch.org/whl/cpu.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
torch_index=()
[ -n "${TORCH_INDEX_URL:-}" ] && torch_index=(--index-url "$TORCH_INDEX_URL")
.venv/bin/python -m pip install -q "${torch_index[@]}" torch==2.13.0
.venv/bin/python -m pip install -q -e '.[export,test]'
