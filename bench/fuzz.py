"""Fuzz every input surface longer than the test suite does, and count.

    .venv/bin/python bench/fuzz.py [--examples N] [--seed S] [--only TEXT]

For each surface (tests/support/fuzz_*.py) it prints the inputs tried and the
failures found (each failure's exception, after Hypothesis's shrinking), and
as its last line ``crashes: N``, the failures of all surfaces together. The
test suite runs the same surfaces with fewer examples (tests/*/test_*_fuzz.py).

The HTTP surfaces (tests/support/fuzz_http.py) send Schemathesis requests made
from `kubetune api`'s own OpenAPI schema to the server in-process; "tried"
counts request sequences (1 to 4 requests each), and a failure is a 5xx or an
error outside the API's error shape.
"""
from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for root in ("api", "operator", "trainer", "tests"):
    if str(ROOT / root) not in sys.path:
        sys.path.insert(0, str(ROOT / root))

MODULES = ["support.fuzz_manifests", "support.fuzz_data", "support.fuzz_storage", "support.fuzz_decide", "support.fuzz_http"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=10, help="examples per surface, as a multiple of the suite's (10)")
    parser.add_argument("--seed", type=int, default=20260101, help="Hypothesis seed (the suite uses 20)")
    parser.add_argument("--only", default="", help="run only surfaces whose name contains this text")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    import importlib

    from support.fuzz import explore

    crashes = 0
    print(f"{'surface':<68} {'tried':>7} {'failures':>8} {'seconds':>8}")
    for name in MODULES:
        for surface in importlib.import_module(name).SURFACES:
            if args.only not in surface.name:
                continue
            start = time.perf_counter()
            result = explore(surface, examples=surface.examples * args.examples, seed_value=args.seed,
                             raise_failures=False)
            print(f"{surface.name:<68} {result.tried:>7} {len(result.failures):>8} {time.perf_counter() - start:>8.1f}",
                  flush=True)
            for failure in result.failures:
                print(f"    {failure[:300]}")
            crashes += len(result.failures)
    print(f"crashes: {crashes}")
    return 1 if crashes else 0


if __name__ == "__main__":
    sys.exit(main())
