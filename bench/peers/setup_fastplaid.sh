#!/usr/bin/env bash
# Creates bench/.venvs/fastplaid, a virtual environment holding pylate and fast-plaid (PyLate's PLAID backend),
# the peer that bench/index_bench.py measures through bench/peers/fastplaid_peer.py. It is kept apart from the
# project's environment because pylate pins old torch/transformers. Safe to run again: skips if already set up.
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV=bench/.venvs/fastplaid
PYTHON=${PYTHON:-python3}

if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "from fast_plaid import search" 2>/dev/null; then
    echo "fast-plaid already installed in $VENV"
    exit 0
fi

"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --upgrade pip
"$VENV/bin/python" -m pip install pylate
"$VENV/bin/python" -c "import fast_plaid, torch; from importlib.metadata import version; \
print('fast-plaid', version('fast-plaid'), 'torch', torch.__version__)"
