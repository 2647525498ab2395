"""bench/gpu_check.sh on a CPU (`--device cpu --quick`): every step of the GPU check runs and lands in its table,
so that the script a GPU machine runs has been run before it gets there. (What it measures on a GPU is in the
README; here only the script is checked.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from support import TOKENIZER_DIR

ROOT = Path(__file__).resolve().parents[2]
PYLATE_TOKENIZER = ROOT.parent / "shared" / "fixtures" / "pylate" / "model"


@pytest.mark.skipif(not (PYLATE_TOKENIZER / "tokenizer.json").exists() or not TOKENIZER_DIR.exists(),
                    reason="../shared (tokenizers) is missing")
def test_every_step_of_the_gpu_check_runs_on_a_cpu(tmp_path):
    out = subprocess.run(["bash", "bench/gpu_check.sh", "--device", "cpu", "--quick", "--repeat", "1",
                          "--json", str(tmp_path / "gpu_check.json")], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    results = json.loads((tmp_path / "gpu_check.json").read_text())
    assert not [name for name, value in results.items() if isinstance(value, dict) and "error" in value]
    assert results["environment"]["device"] == "cpu"
    assert "skipped" in results["cuda_tests"]["summary"]  # no CUDA here: the tests are found and skipped
    assert set(results["throughput"]) == {"fixed 512", "variable 32-512", "document 8192"}
    assert all(v["ours"] > 0 and v["transformers"] > 0 for v in results["throughput"].values())
    assert results["index"]["files"] > 0 and results["index"]["tokens"] > 0
    table = out.stdout[out.stdout.index("GPU check"):]
    for row in ("environment", "tests/encoder/test_cuda.py", "tokens/s, fixed 512", "mret index --device"):
        assert row in table
