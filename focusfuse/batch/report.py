"""What a batch tells: one summary line, and ``--report`` with one row per stack (JSON lines or CSV)."""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path

from focusfuse.batch.runner import StackOutcome
from focusfuse.io.writer import write_text

SUMMARY_WORDS = {
    "fused": "fused",
    "done": "done before",
    "settling": "settling",
    "busy": "busy in another run",
    "failed": "failed",
    "failed-before": "failed before",
}


def summary_line(outcomes: Sequence[StackOutcome], seconds: float) -> str:
    """``batch: 3 fused, 2 done before, 1 settling, 0 failed in 12.3 s`` (rare statuses only when present)."""
    counts: Counter[str] = Counter(outcome.status for outcome in outcomes)
    always = ("fused", "done", "settling", "failed")
    parts = [
        f"{counts[status]} {words}" for status, words in SUMMARY_WORDS.items() if status in always or counts[status]
    ]
    return f"batch: {', '.join(parts)} in {seconds:.1f} s"


def write_report(path: Path, outcomes: Sequence[StackOutcome]) -> None:
    """One row per stack: CSV when ``path`` ends in .csv, else one JSON object a line."""
    if path.suffix.lower() == ".csv":
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=[field.name for field in fields(StackOutcome)])
        writer.writeheader()
        for outcome in outcomes:
            writer.writerow(outcome.record())
        text = buffer.getvalue()
    else:
        text = "".join(json.dumps(outcome.record()) + "\n" for outcome in outcomes)
    write_text(path, text)
