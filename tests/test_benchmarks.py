"""The benchmarks still run (quick mode) and write their result files; no timing is asserted here."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["sampler", "training", "regional", "tiled_labels", "scale", "embed_field"])
def test_benchmark_quick_run_writes_results(name, tmp_path):
    out = tmp_path / f"{name}.json"
    run = subprocess.run([sys.executable, str(REPO / "benchmarks" / f"{name}.py"), "--quick", "--out", str(out)],
                         cwd=REPO, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result, f"{name} wrote an empty result"
