"""Fusing the stacks of a batch: one stack at a time here, in worker processes, or on a Dask cluster.

Every stack goes through ``process_stack``, wherever it runs: it checks that the
stack has settled, is not already done, has not already failed on the same files,
takes the stack's lock, checks again under it (another run may have just finished
it), and fuses. So the same rules hold for one process, for ``--jobs N`` workers,
for overlapping cron runs and for the workers of a cluster sharing an output tree.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, replace
from multiprocessing import get_context
from typing import Any, Literal

from focusfuse.batch.discovery import StackJob
from focusfuse.batch.locking import OutputLock
from focusfuse.batch.records import (
    clear_failure,
    current_inputs,
    earlier_failure,
    finished,
    record_failure,
    seconds_since_change,
)
from focusfuse.errors import FocusFuseError
from focusfuse.fusion.tiling import DEFAULT_MAX_MEMORY
from focusfuse.interruption import stop
from focusfuse.io.filecheck import available_memory

Status = Literal["fused", "due", "done", "settling", "busy", "failed", "failed-before"]
STATUSES: tuple[Status, ...] = ("fused", "due", "done", "settling", "busy", "failed", "failed-before")
DEFAULT_SETTLE_S = 60.0


@dataclass(frozen=True)
class BatchSettings:
    """How every stack of a batch is fused, and when one is due."""

    strategy: str = "calibrated"
    composite: str = "pyramid"
    align: str = "auto"
    crop: bool = False
    prune: bool = False
    device: str = "auto"
    max_memory: int | None = None
    weights: str | None = None
    settle_s: float = DEFAULT_SETTLE_S
    force: bool = False
    retry_failed: bool = False
    speed: str = "default"

    def options(self) -> dict:
        from focusfuse.fusion.pipeline import result_options

        return result_options(
            strategy=self.strategy,
            composite=self.composite,
            align=self.align,
            crop=self.crop,
            prune=self.prune,
            speed=self.speed,
        )


@dataclass
class StackOutcome:
    """What happened to one stack (one line of ``--report``)."""

    stack: str
    source: str
    status: Status
    slices: int
    seconds: float
    finished_at: str = ""
    fused: str | None = None
    error: str | None = None
    detail: str | None = None

    def __post_init__(self) -> None:
        if not self.finished_at:
            self.finished_at = time.strftime("%Y-%m-%dT%H:%M:%S%z")

    def record(self) -> dict[str, Any]:
        return asdict(self)


def _lost(job: StackJob, why: str) -> StackOutcome:
    """A stack whose worker never answered."""
    return StackOutcome(job.name, job.source, "failed", job.n_slices, 0.0, error=f"{job.source}: {why}")


def process_stack(job: StackJob, settings: BatchSettings, weights_sha256: str, *, fuse: bool = True) -> StackOutcome:
    """Decide whether ``job`` is due and, when ``fuse``, fuse it under its lock.

    Without ``fuse`` (``--dry-run``, and the first pass that finds what is due) a due
    stack comes back as ``due``. Errors of the stack become a ``failed`` outcome
    recorded beside its outputs; only an interruption propagates.
    """
    started = time.perf_counter()
    options = settings.options()

    def outcome(status: Status, **fields: Any) -> StackOutcome:
        fields.setdefault("slices", job.n_slices)
        return StackOutcome(job.name, job.source, status, seconds=round(time.perf_counter() - started, 3), **fields)

    def changing(error: OSError) -> StackOutcome:
        return outcome("settling", detail=f"{error.filename or job.source} changed while being listed")

    def known(inputs: list[dict]) -> StackOutcome | None:
        """``done`` or ``failed-before`` for these files; None when the stack is due."""
        if not settings.force and finished(job, inputs, weights_sha256, options):
            return outcome("done", fused=str(job.fused))
        failure = None if settings.retry_failed else earlier_failure(job, inputs, weights_sha256, options)
        return None if failure is None else outcome("failed-before", error=failure)

    try:
        inputs = current_inputs(job)
        quiet_for = seconds_since_change(job)
    except OSError as error:
        return changing(error)
    if quiet_for < settings.settle_s:
        return outcome("settling", detail=f"changed {quiet_for:.0f} s ago (--settle {settings.settle_s:g})")
    seen = known(inputs)
    if seen is not None or not fuse:
        return seen or outcome("due", fused=str(job.fused))

    with OutputLock(job.lock) as lock:
        try:
            job.fused.parent.mkdir(parents=True, exist_ok=True)
            if not lock.acquire():
                return outcome("busy", detail="another run is fusing it")
        except OSError as error:
            return outcome("failed", error=f"{job.lock.parent}: cannot lock ({error.strerror or error})")
        # Another run may have fused (or failed) it between our first look and the lock.
        try:
            inputs = current_inputs(job)
        except OSError as changed:
            return changing(changed)
        seen = known(inputs)
        if seen is not None:
            return seen
        problem = job.problem or _fuse(job, settings, weights_sha256)
        if problem is None:
            clear_failure(job)
            return outcome("fused", fused=str(job.fused))
        try:
            record_failure(job, inputs, weights_sha256, options, problem)
        except FocusFuseError as unrecorded:
            problem = f"{problem}; and {unrecorded}"
        return outcome("failed", error=problem)


def _fuse(job: StackJob, settings: BatchSettings, weights_sha256: str) -> str | None:
    """Fuse one stack; the error as one line, or None.

    A worker whose own weights differ from the batch's (another installation on a
    cluster node) would write results that every later run finds out of date: refused.
    """
    from focusfuse.fusion.pipeline import fuse_stack
    from focusfuse.model.weights import find_weights, verify_checksum

    try:
        weights_path = find_weights(settings.weights)
        if verify_checksum(weights_path) != weights_sha256:
            return f"{weights_path}: this worker's weights differ from the batch's (sha256 {weights_sha256[:12]}...)"
        fuse_stack(
            list(job.inputs),
            output=job.fused,
            strategy=settings.strategy,  # type: ignore[arg-type]  # checked by fuse_stack
            composite=settings.composite,  # type: ignore[arg-type]
            align=settings.align,  # type: ignore[arg-type]
            crop=settings.crop,
            prune=settings.prune,
            device=settings.device,
            max_memory=settings.max_memory,
            weights=settings.weights,
            speed=settings.speed,  # type: ignore[arg-type]
            scene=None if job.selection is None else job.selection.scene,
            position=None if job.selection is None else job.selection.position,
        )
    except FocusFuseError as error:
        return str(error)
    except MemoryError:
        return f"{job.source}: out of memory (the image is too large for this machine or --max-memory)"
    except Exception as error:  # a bug, or a library's failure on an odd file: report it, go on with the rest
        message = str(error).strip().splitlines()[0] if str(error).strip() else ""
        return f"{job.source}: internal error ({type(error).__name__}: {message[:200]})"
    return None


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def default_workers(due: int, device: str, max_memory: int | None) -> int:
    """Worker processes for ``due`` stacks: one per core, as many as the memory budget allows.

    Each worker may use ``--max-memory`` (default 2 GiB). On a GPU, two workers: one
    computes while the other reads, decodes and writes.
    """
    if due <= 1:
        return 1
    if device.startswith("cuda") or (device == "auto" and _cuda_available()):
        return min(2, due)
    budget = DEFAULT_MAX_MEMORY if max_memory is None else max_memory
    available = available_memory()
    by_memory = usable_cores() if available is None else max(1, available // budget)
    return max(1, min(usable_cores(), by_memory, due))


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


class WorkerStopped(SystemExit):
    """SIGTERM in a worker process: unwinds a stack being fused (its lock and partial files are removed).

    A SystemExit, not a KeyboardInterrupt: a worker stopped while waiting for its next
    stack exits quietly, where a KeyboardInterrupt would print a traceback.
    """


def _start_worker(threads: int) -> None:
    """A worker's threads, and its signals: Ctrl-C is the parent's to handle; SIGTERM stops it cleanly."""
    import torch

    torch.set_num_threads(threads)
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    signal.signal(signal.SIGTERM, lambda signum, frame: stop(WorkerStopped(128 + signal.SIGTERM), signal.SIGTERM))


def dry_run(jobs: Sequence[StackJob], settings: BatchSettings) -> list[StackOutcome]:
    """What ``run_batch`` would do with each stack (``due`` for those it would fuse), fusing nothing."""
    settings, weights_sha256 = _checked_weights(settings)
    return [process_stack(job, settings, weights_sha256, fuse=False) for job in jobs]


def _checked_weights(settings: BatchSettings) -> tuple[BatchSettings, str]:
    """The settings with an explicit weights path made absolute, and the weights' checksum.

    Without --weights every worker finds its own installed weights (a cluster's nodes
    may have focusfuse installed elsewhere); the checksum in each result tells whether
    they were the same.
    """
    from focusfuse.model.weights import find_weights, verify_checksum

    weights_path = find_weights(settings.weights).resolve()
    if settings.weights is not None:
        settings = replace(settings, weights=str(weights_path))
    return settings, verify_checksum(weights_path)


def run_batch(
    jobs: Sequence[StackJob],
    settings: BatchSettings,
    *,
    workers: int | None = None,
    scheduler: Any = None,
    on_outcome: Callable[[StackOutcome], None] | None = None,
    on_due: Callable[[int], None] | None = None,
) -> list[StackOutcome]:
    """Fuse every due stack of ``jobs``; the outcomes in the order of ``jobs``.

    Args:
        workers: processes on this machine (None: ``default_workers``); 1 fuses here.
        scheduler: a Dask scheduler's address or a ``distributed.Client``: the due
            stacks run as one task each on that cluster's workers.
        on_outcome: called with each outcome as it is known.
        on_due: called once with the number of stacks to fuse.
    """
    settings, weights_sha256 = _checked_weights(settings)
    report = on_outcome or (lambda outcome: None)
    outcomes: dict[int, StackOutcome] = {}
    due: list[int] = []
    for number, job in enumerate(jobs):
        first_look = process_stack(job, settings, weights_sha256, fuse=False)
        if first_look.status == "due":
            due.append(number)
        else:
            outcomes[number] = first_look
            report(first_look)
    if on_due is not None:
        on_due(len(due))
    due_jobs = [jobs[number] for number in due]
    if scheduler is not None:
        fused = _on_dask(due_jobs, settings, weights_sha256, scheduler, report)
    else:
        count = default_workers(len(due_jobs), settings.device, settings.max_memory) if workers is None else workers
        if count <= 1 or len(due_jobs) <= 1:
            fused = []
            for job in due_jobs:
                fused.append(process_stack(job, settings, weights_sha256))
                report(fused[-1])
        else:
            fused = _in_processes(due_jobs, settings, weights_sha256, count, report)
    outcomes.update(zip(due, fused, strict=True))
    return [outcomes[number] for number in range(len(jobs))]


def _in_processes(
    jobs: list[StackJob],
    settings: BatchSettings,
    weights_sha256: str,
    workers: int,
    report: Callable[[StackOutcome], None],
) -> list[StackOutcome]:
    """Fuse ``jobs`` in ``workers`` processes, each loading the model once and using its share of the cores."""
    threads = max(1, usable_cores() // workers)
    results: list[StackOutcome | None] = [None] * len(jobs)
    pool = ProcessPoolExecutor(
        max_workers=min(workers, len(jobs)),
        mp_context=get_context("spawn"),  # not fork: torch's thread pools do not survive a fork
        initializer=_start_worker,
        initargs=(threads,),
    )
    try:
        numbers: dict[Future, int] = {
            pool.submit(process_stack, job, settings, weights_sha256): number for number, job in enumerate(jobs)
        }
        for future in as_completed(numbers):
            number = numbers[future]
            try:
                results[number] = future.result()
            except BrokenProcessPool:
                results[number] = _lost(jobs[number], "its worker process died (killed, or out of memory)")
            except WorkerStopped:
                results[number] = _lost(jobs[number], "its worker process was stopped (SIGTERM)")
            report(results[number])  # type: ignore[arg-type]
    except BaseException:
        for process in list(getattr(pool, "_processes", {}).values()):
            process.terminate()  # SIGTERM: the worker removes what it was writing
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    return [result for result in results if result is not None]


def _on_dask(
    jobs: list[StackJob],
    settings: BatchSettings,
    weights_sha256: str,
    scheduler: Any,
    report: Callable[[StackOutcome], None],
) -> list[StackOutcome]:
    """One task per stack on a Dask cluster; each worker process loads the model once (``shared_model``)."""
    try:
        from distributed import Client
        from distributed import as_completed as cluster_completed
    except ImportError:
        raise FocusFuseError(
            "--scheduler needs dask.distributed, which is not installed: pip install 'focusfuse[dask]'"
        ) from None
    own_client = not isinstance(scheduler, Client)
    try:
        client = Client(scheduler, timeout="30s") if own_client else scheduler
    except OSError as error:
        raise FocusFuseError(f"--scheduler {scheduler}: cannot connect ({error})") from None
    try:
        run = uuid.uuid4().hex[:12]
        futures = [
            client.submit(process_stack, job, settings, weights_sha256, key=f"focusfuse-{run}-{number}")
            for number, job in enumerate(jobs)
        ]
        numbers = {future.key: number for number, future in enumerate(futures)}
        results: list[StackOutcome | None] = [None] * len(jobs)
        for future in cluster_completed(futures):
            number = numbers[future.key]
            try:
                results[number] = future.result()
            except Exception as error:  # the worker died or the task could not run there
                results[number] = _lost(jobs[number], f"the cluster could not run it ({type(error).__name__}: {error})")
            report(results[number])  # type: ignore[arg-type]
    finally:
        if own_client:
            client.close()
    return [result for result in results if result is not None]
