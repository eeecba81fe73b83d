"""A few hundred mutated, truncated and spliced PNG, JPEG, TIFF, WebP and BMP files: each ends in slices or one line.

The fuzzer (``reader_fuzz.py``) runs in a child process, so a native decoder's crash
fails this test with the file's name instead of taking pytest down with it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

FUZZER = Path(__file__).with_name("reader_fuzz.py")


def test_mutated_files_end_in_slices_or_one_error_line_never_a_crash_or_traceback(tmp_path):
    count = 300
    done = subprocess.run(
        [sys.executable, str(FUZZER), "--count", str(count), "--seed", "0", "--folder", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=900,  # a guard against a hang, far above the few seconds this takes
    )
    current = (tmp_path / "current.txt").read_text() if (tmp_path / "current.txt").exists() else "?"
    assert done.returncode == 0, f"the reader crashed (status {done.returncode}) on {current}: {done.stderr[-2000:]}"
    assert done.stderr == "", f"something printed on stderr: {done.stderr[-2000:]}"
    outcomes = [json.loads(line)["outcome"] for line in done.stdout.splitlines()]
    assert len(outcomes) == count
    tracebacks = [outcome for outcome in outcomes if outcome.startswith("traceback")]
    assert not tracebacks, tracebacks[:5]
    refused = sum(outcome.startswith("error") for outcome in outcomes)
    assert 0.3 * count < refused < count, "most mutants are refused, some still read"
    assert any("fused" in outcome for outcome in outcomes)
