"""bench/fuzz.py runs and prints its counts (the surfaces themselves are tested in tests/*/test_*_fuzz.py)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_fuzz_bench_prints_inputs_tried_failures_and_crashes():
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "fuzz.py"), "--examples", "1", "--only", "missing sections"],
                       capture_output=True, text=True, cwd=ROOT, timeout=300)
    lines = r.stdout.strip().splitlines()
    assert r.returncode == 0, r.stdout + r.stderr[-2000:]
    assert lines[0].split() == ["surface", "tried", "failures", "seconds"]
    row = lines[1].rsplit(None, 3)
    assert row[0] == "manifest: missing sections, no follow-on errors" and row[1:3] == ["20", "0"]
    assert lines[-1] == "crashes: 0"
