#!/usr/bin/env python3
"""``focusfuse batch`` against a shell loop of ``focusfuse stack`` calls, and on a Dask LocalCluster.

An acquisition tree of small stacks (default 20 folders of 8 slices, 384x384 gray
PNG, from the synthetic depth-stack generator with a seeded smooth depth map) is fused:
1. by a shell loop, one ``focusfuse stack DIR -o OUT/NAME.png`` process per stack
   (each one starts Python, imports torch and loads the weights);
2. by one ``focusfuse batch ROOT -o OUT --jobs 1`` (one process, the model loaded once),
   and ``--jobs 2``;
3. by ``run_batch(..., scheduler=cluster)`` on a ``distributed.LocalCluster`` of 2
   worker processes with one thread each (cluster start-up timed on its own line).
Every run writes its own output tree; the index maps of every run are compared with
the shell loop's (bit-identical expected). Wall seconds of each whole run.
Usage: python bench/batch.py [--stacks 20] [--slices 8] [--size 384] [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from focusfuse.training.synthetic import make_depth_stack, procedural_texture, smooth_depth

FOCUSFUSE = [sys.executable, "-m", "focusfuse"]


def write_tree(root: Path, stacks: int, slices: int, size: int) -> list[str]:
    names = []
    for number in range(stacks):
        rng = np.random.default_rng(number)
        sharp = (procedural_texture(size, size, rng) * 255).round().astype(np.uint8)
        depth = smooth_depth(size, size, slices, rng)
        stack = make_depth_stack(sharp, depth, slices, blur_per_slice=1.5, rng=rng)
        name = f"day{number % 2}/pos{number:02d}"
        (root / name).mkdir(parents=True)
        for k, image in enumerate(stack.slices):
            cv2.imwrite(str(root / name / f"z{k:02d}.png"), image)
        names.append(name)
    past = time.time() - 3600
    for path in root.rglob("*"):
        os.utime(path, (past, past))
    return names


def timed(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, stdin=subprocess.DEVNULL)
    return time.perf_counter() - started


def same_index_maps(names: list[str], reference: Path, other: Path) -> bool:
    def read(folder: Path, name: str) -> np.ndarray:
        return cv2.imread(str(folder / f"{name}.index.png"), cv2.IMREAD_UNCHANGED)

    return all(np.array_equal(read(reference, name), read(other, name)) for name in names)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stacks", type=int, default=20)
    parser.add_argument("--slices", type=int, default=8)
    parser.add_argument("--size", type=int, default=384)
    parser.add_argument("--keep", type=Path, help="Write the trees here instead of a temporary folder.")
    arguments = parser.parse_args()
    work = arguments.keep or Path(tempfile.mkdtemp(prefix="focusfuse-batch-"))
    root = work / "acq"
    if root.exists():
        shutil.rmtree(root)
    names = write_tree(root, arguments.stacks, arguments.slices, arguments.size)
    print(
        f"{arguments.stacks} stacks of {arguments.slices} x {arguments.size}x{arguments.size} gray PNG; "
        f"{os.cpu_count()} cores; device cpu"
    )
    rows: list[tuple[str, float, Path]] = []

    loop_out = work / "loop"
    started = time.perf_counter()
    for name in names:
        (loop_out / name).parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [*FOCUSFUSE, "stack", str(root / name), "-o", str(loop_out / f"{name}.png"), "--device", "cpu", "-q"],
            check=True,
            stdin=subprocess.DEVNULL,
        )
    rows.append(("shell loop of `focusfuse stack`", time.perf_counter() - started, loop_out))
    print(f"shell loop: {rows[-1][1]:.1f} s", flush=True)

    for jobs in (1, 2):
        out = work / f"jobs{jobs}"
        seconds = timed([*FOCUSFUSE, "batch", str(root), "-o", str(out), "--jobs", str(jobs), "--device", "cpu", "-q"])
        rows.append((f"`focusfuse batch --jobs {jobs}`", seconds, out))
        print(f"batch --jobs {jobs}: {seconds:.1f} s", flush=True)
        again = timed([*FOCUSFUSE, "batch", str(root), "-o", str(out), "--jobs", str(jobs), "--device", "cpu", "-q"])
        if jobs == 1:
            rows.append(("`focusfuse batch` again (all done)", again, out))

    try:
        import distributed
    except ImportError:
        print("dask LocalCluster: skipped (dask.distributed is not installed: pip install 'focusfuse[dask]')")
    else:
        from focusfuse.batch.discovery import discover_stacks
        from focusfuse.batch.runner import BatchSettings, run_batch

        out = work / "dask"
        started = time.perf_counter()
        with distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None, silence_logs=50
        ) as cluster:
            start_up = time.perf_counter() - started
            started = time.perf_counter()
            jobs_found = discover_stacks([root], out).jobs
            outcomes = run_batch(jobs_found, BatchSettings(device="cpu"), scheduler=cluster.scheduler_address)
            seconds = time.perf_counter() - started
        assert all(outcome.status == "fused" for outcome in outcomes), outcomes
        print(f"dask LocalCluster (2 worker processes x 1 thread) start-up: {start_up:.1f} s")
        rows.append(("Dask LocalCluster, 2 workers x 1 thread", seconds, out))

    loop_seconds = rows[0][1]
    print(f"{'run':<42} {'seconds':>8} {'per stack':>10} {'vs loop':>8}  index maps = loop's")
    for label, seconds, out in rows:
        same = same_index_maps(names, loop_out, out)
        print(
            f"{label:<42} {seconds:8.1f} {seconds / len(names):10.2f} {seconds / loop_seconds:8.2f}  "
            f"{'yes' if same else 'NO'}",
            flush=True,
        )
    if arguments.keep is None:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
