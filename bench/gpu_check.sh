#!/usr/bin/env bash
# The GPU check (bench/gpu_check.py says what it runs): install what is missing, then run every step and print one table.
#   bash bench/gpu_check.sh [--device cuda|cuda:N|cpu] [--shape base] [--quick] [--repeat 3]
# A machine with a package index: `pip install -e ".[hf]"` (keeps its CUDA torch). A machine without one: put the
# wheels in .gpu/wheels/ first (README, "GPU", says how to download them); they are installed from there.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c "import faiss, tree_sitter, pathspec, typer, transformers, tokenizers, safetensors" 2>/dev/null; then
  if compgen -G ".gpu/wheels/*.whl" >/dev/null; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --target /tmp/mret-site .gpu/wheels/*.whl
    export PYTHONPATH="/tmp/mret-site${PYTHONPATH:+:$PYTHONPATH}"
  else
    "$PYTHON" -m pip install -q -e ".[hf]"
  fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
exec "$PYTHON" bench/gpu_check.py "$@"
