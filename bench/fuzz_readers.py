#!/usr/bin/env python3
"""Fuzz the readers at length: thousands of mutated PNG, JPEG, TIFF, WebP and BMP files, in child processes.

Each seed runs tests/io/reader_fuzz.py (valid seed files of every format, mutated by
bit flips, truncation, splices, repeats, inserted bytes, large numbers and zero runs;
every mutant read as a stack, every 25th one that reads also fused). A run passes
when no child crashed or hung, nothing was printed on stderr, and every mutant ended
in slices or one error line. Prints one row per seed and the outcome counts.
Usage: python bench/fuzz_readers.py [--seeds 10] [--count 1000] [--timeout 900]
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FUZZER = Path(__file__).resolve().parents[1] / "tests" / "io" / "reader_fuzz.py"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--count", type=int, default=1000, help="mutants per seed")
    parser.add_argument("--timeout", type=float, default=900, help="seconds a child may take before it counts as hung")
    arguments = parser.parse_args()
    totals: collections.Counter = collections.Counter()
    reasons: collections.Counter = collections.Counter()
    failed = False
    print(f"{'seed':>4} {'mutants':>7} {'read':>6} {'fused':>5} {'refused':>7} {'traceback':>9} {'status':>6} {'s':>6}")
    for seed in range(arguments.seeds):
        with tempfile.TemporaryDirectory(prefix="focusfuse-fuzz-") as folder:
            started = time.perf_counter()
            command = [sys.executable, str(FUZZER), "--count", str(arguments.count), "--seed", str(seed)]
            try:
                done = subprocess.run(
                    [*command, "--folder", folder], capture_output=True, text=True, timeout=arguments.timeout
                )
                status, stdout, stderr = str(done.returncode), done.stdout, done.stderr
            except subprocess.TimeoutExpired as expired:
                status, stdout, stderr = "hung", (expired.stdout or b"").decode(), ""
            seconds = time.perf_counter() - started
            outcomes = [json.loads(line)["outcome"] for line in stdout.splitlines()]
            counts = collections.Counter(outcome.split(" ", 1)[0] for outcome in outcomes)
            fused = sum("; fused" in outcome for outcome in outcomes)
            for outcome in outcomes:
                if outcome.startswith("error"):
                    reasons[re.sub(r"\d+", "N", outcome.split(": ", 1)[-1])[:80]] += 1
            totals.update(counts)
            totals["fused"] += fused
            bad = status != "0" or stderr or counts["traceback"] or len(outcomes) != arguments.count
            failed = failed or bool(bad)
            print(
                f"{seed:>4} {len(outcomes):>7} {counts['ok']:>6} {fused:>5} {counts['error']:>7} "
                f"{counts['traceback']:>9} {status:>6} {seconds:>6.1f}"
            )
            if stderr:
                print(f"     stderr: {stderr.strip()[:300]}")
            for outcome in outcomes:
                if outcome.startswith("traceback"):
                    print(f"     {outcome[:200]}")
    print(
        f"all: {sum(totals[k] for k in ('ok', 'error', 'traceback'))} mutants, {totals['ok']} read, "
        f"{totals['fused']} fused, {totals['error']} refused with one line, {totals['traceback']} tracebacks; "
        f"{'FAILED' if failed else 'no crash, hang, traceback or stray stderr'}"
    )
    print("most common refusals:")
    for reason, count in reasons.most_common(8):
        print(f"  {count:>6}  {reason}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
