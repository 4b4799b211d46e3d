"""Run every benchmark in turn (``make bench``); each writes its JSON under bench/out/.

Results worth keeping go into docs/benchmarks.md with the command, the machine and the date.
Run on a quiet machine: the figures are ratios against a baseline measured in the same run, but
a busy machine still adds noise.
"""

from __future__ import annotations

import subprocess
import sys

BENCHES = [
    ["bench.bench_download"],
    ["bench.bench_validate"],
    ["bench.bench_train", "--bf16"],
    ["bench.bench_report"],
    ["bench.bench_rerun", "--pipeline", "smoke-jpeg"],
]


def main() -> int:
    failed = []
    for args in BENCHES:
        print(f"\n=== python -m {' '.join(args)}", flush=True)
        if subprocess.run([sys.executable, "-m", *args]).returncode != 0:
            failed.append(args[0])
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
