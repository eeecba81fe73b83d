"""What a stack's results record of their inputs, and so whether the stack is due.

A stack is done when its fused image and index map exist and its timing report
records the same input files (names, sizes, mtimes), the same weights (sha256) and
the same result-changing options as this run would use; a changed or added slice
makes it due again. A failure is recorded the same way beside the outputs
(``NAME.failed.json``), so that cron does not fail again, every few minutes, on files
that have not changed since.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from focusfuse.batch.discovery import StackJob
from focusfuse.fusion.pipeline import folder_contents, input_files
from focusfuse.io.writer import write_json


def current_inputs(job: StackJob) -> list[dict]:
    """Names, sizes and mtimes of the stack's files now (``OSError`` when one has gone)."""
    return input_files(list(job.inputs))


def seconds_since_change(job: StackJob, now: float | None = None) -> float:
    """Seconds since the stack last changed: any file written, renamed or added.

    The status-change time (ctime) counts as well as the mtime, because copy tools
    that keep mtimes (``cp -p``, ``rsync -t``) set an old mtime on a file they have
    just written; a folder's own mtime changes when a slice is added or renamed into it.
    """
    now = time.time() if now is None else now
    stats = [path.stat() for path in job.inputs]
    if job.folder is not None:
        stats.append(job.folder.stat())
    newest = max(max(stat.st_mtime, stat.st_ctime) for stat in stats)
    for path in job.inputs:
        if path.is_dir():  # an OME-Zarr image: a chunk written inside it counts
            newest = max(newest, folder_contents(path)[1] / 1e9)
    return now - newest


def _read_json(path: Path) -> dict | None:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _made_from(record: dict | None, inputs: list[dict], weights_sha256: str, options: dict) -> bool:
    """Whether a timing report or failure record names these files, weights and options."""
    return (
        record is not None
        and record.get("inputs") == inputs
        and record.get("weights_sha256") == weights_sha256
        and record.get("options") == options
    )


def finished(job: StackJob, inputs: list[dict], weights_sha256: str, options: dict) -> bool:
    """True when the stack's outputs exist and were made from exactly these inputs, weights and options."""
    if not (job.fused.is_file() and job.index_map.is_file()):
        return False
    return _made_from(_read_json(job.timing), inputs, weights_sha256, options)


def earlier_failure(job: StackJob, inputs: list[dict], weights_sha256: str, options: dict) -> str | None:
    """The error of an earlier run that failed on these same files, weights and options, else None."""
    record = _read_json(job.failure)
    if record is None or not _made_from(record, inputs, weights_sha256, options):
        return None
    return str(record.get("error", "failed"))


def record_failure(job: StackJob, inputs: list[dict], weights_sha256: str, options: dict, error: str) -> None:
    write_json(
        job.failure,
        {
            "stack": job.name,
            "error": error,
            "inputs": inputs,
            "weights_sha256": weights_sha256,
            "options": options,
            "failed_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        },
    )


def clear_failure(job: StackJob) -> None:
    try:
        os.unlink(job.failure)
    except FileNotFoundError:
        pass
