#!/usr/bin/env python3
"""focusfuse beside enfuse and focus-stack on the same stacks, in one run: seconds, peak memory, PSNR.

Stacks: a synthetic 10-slice 1024x1024 stack with known depth (bench/multislice.py's
generator, noise std 0.01; PSNR against the all-in-focus truth), and the real stacks
../shared/data/stacks/pcb10 (10 x 2048x1536 JPEG) and plankton5 (5 x 20 Mpx), which
have no truth (time and memory only). Each tool runs as its own process on the
stack's files; wall seconds include reading and writing, peak RSS is the process's
(os.wait4). Peers: Debian's enfuse with its focus-stacking flags, and focus-stack
with its defaults (it aligns slices; --align-keep-size keeps the frame) from $FOCUS_STACK or the PATH. A missing peer or
stack is a row that says why. focusfuse runs with at most --memory-limit GiB of
address space, so a stack it cannot fit fails as a row instead of taking the machine.
Usage: python bench/peers.py [--stacks synthetic,pcb10,plankton5] [--memory-limit 16]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from multislice import psnr, write_case

from focusfuse.io.color import to_gray
from focusfuse.io.reader import open_stack, read_image

REPO = Path(__file__).resolve().parent.parent
REAL_STACKS = REPO.parent / "shared" / "data" / "stacks"
ENFUSE_FLAGS = ["--exposure-weight=0", "--saturation-weight=0", "--contrast-weight=1", "--hard-mask"]


@dataclass
class Run:
    seconds: float
    peak_mib: float
    error: str | None


GNU_TIME = Path("/usr/bin/time")


def run_measured(command: list[str], memory_limit: int | None = None) -> Run:
    """Run one command; its wall seconds, its peak RSS (MiB) and, if it failed, its last stderr line.

    Linux carries a process's peak RSS across fork and exec, so a tool started straight
    from this (large) process would report at least this process's size. GNU time, when
    installed, starts the tool from its own small process and reports the tool's peak.
    """

    def limit() -> None:
        if memory_limit:
            resource.setrlimit(resource.RLIMIT_AS, (memory_limit, memory_limit))

    started = time.perf_counter()
    with tempfile.TemporaryFile() as stderr, tempfile.NamedTemporaryFile("r") as peak:
        launcher = [str(GNU_TIME), "-f", "%M", "-o", peak.name] if GNU_TIME.exists() else []
        process = subprocess.Popen([*launcher, *command], stdout=subprocess.DEVNULL, stderr=stderr, preexec_fn=limit)
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        stderr.seek(0)
        lines = stderr.read().decode(errors="replace").strip().splitlines()
        reported = peak.read().strip().splitlines()
    peak_kib = int(reported[-1]) if launcher and reported and reported[-1].isdigit() else usage.ru_maxrss
    error = None
    if process.returncode != 0:
        last = lines[-1] if lines else "no message"
        if last.startswith("focusfuse: error: "):  # the problem, without the file it names
            last = last.split(": ", 3)[-1]
        error = f"exit {process.returncode}: {last[:110]}"
    return Run(seconds, peak_kib / 1024.0, error)


def peer_prefix(tool: str) -> tuple[list[str] | None, str]:
    """A peer's command prefix, or None and why it is absent (``enfuse`` or ``focus-stack``)."""
    if tool == "enfuse":
        enfuse = shutil.which("enfuse")
        return ([enfuse, *ENFUSE_FLAGS], "") if enfuse else (None, "enfuse not installed (apt-get install enfuse)")
    configured = os.environ.get("FOCUS_STACK")
    focus_stack = shutil.which(configured or "focus-stack")  # a path: only if it is an executable file
    if focus_stack:
        return [focus_stack], ""
    if configured:
        return None, f"focus-stack not found at $FOCUS_STACK ({configured}): not an executable file"
    return None, "focus-stack not found ($FOCUS_STACK or PATH; build it from its source with make)"


def tools() -> dict[str, tuple[list[str] | None, str]]:
    """Per tool: the command prefix (None when absent) and why it is absent."""
    focusfuse = str(Path(sys.executable).parent / "focusfuse")
    return {  # enfuse first: the others' ratios are to its time
        "enfuse": peer_prefix("enfuse"),
        "focus-stack": peer_prefix("focus-stack"),
        "focusfuse": ([focusfuse, "stack", "--quiet", "--device", "cpu"], ""),
    }


def command_for(tool: str, prefix: list[str], files: list[Path], output: Path) -> list[str]:
    names = [str(f) for f in files]
    if tool == "focusfuse":
        return [*prefix, *names, "-o", str(output)]
    if tool == "enfuse":
        return [*prefix, "-o", str(output), *names]
    return [*prefix, "--align-keep-size", f"--output={output}", *names]


def read_output(path: Path) -> np.ndarray:
    """A fused image as a tool wrote it, without the alpha channel enfuse adds."""
    fused = read_image(path)
    return fused[..., :3] if fused.ndim == 3 else fused


def run_peer(tool: str, files: list[Path], output: Path) -> np.ndarray | str:
    """A peer's fused image of ``files`` (written to ``output``), or why there is none."""
    prefix, why = peer_prefix(tool)
    if prefix is None:
        return why
    subprocess.run(command_for(tool, prefix, files, output), check=True, capture_output=True)
    return read_output(output)


def stacks(names: list[str], scratch: Path):
    """(label, slice files, all-in-focus truth or None, why absent or None) per requested stack."""
    for name in names:
        if name == "synthetic":
            folder = scratch / "synthetic"
            sharp, _ = write_case(folder, 1024, 10, "noise", 0)
            yield "synthetic 10x1024x1024", sorted(folder.iterdir()), sharp, None
            continue
        folder = REAL_STACKS / name
        if not folder.is_dir():
            yield name, [], None, f"{folder} not found"
            continue
        source = open_stack([folder])
        first = source.read(0)
        label = f"{name} {len(source)}x{first.shape[1]}x{first.shape[0]}"
        yield label, [Path(p) for p in source.paths], None, None


Measure = Callable[[str, list[str], Path], Run]


def print_header(widths: tuple[int, int]) -> None:
    """The table's two header lines; ``widths``: of the stack and tool columns."""
    stack, tool = widths
    print(
        f"{os.cpu_count()} cores; peak RSS per process; ratio = seconds / enfuse's seconds on the same stack, "
        "vs f-s = seconds / focus-stack's"
    )
    columns = f"{'seconds':>8} {'peak MiB':>9} {'PSNR dB':>8} {'ratio':>6} {'vs f-s':>6}"
    print(f"{'stack':<{stack}} {'tool':<{tool}} {columns}")


def compare_tools(
    label: str,
    rows: dict[str, tuple[list[str] | None, str]],
    measure: Measure,
    truth: np.ndarray | None,
    scratch: Path,
    widths: tuple[int, int],
) -> None:
    """Run every tool of ``rows`` (name: command prefix or None, why absent) on one stack, a row each.

    ``measure(tool, prefix, output)`` runs one tool writing ``output``; enfuse comes first
    in ``rows``, so the others' ratios are to its time.
    """
    stack, width = widths
    enfuse: Run | None = None
    focus_stack: Run | None = None
    for tool, (prefix, why) in rows.items():
        if prefix is None:
            print(f"{label:<{stack}} {tool:<{width}} skipped: {why}")
            continue
        output = scratch / f"{tool}.png"
        run = measure(tool, prefix, output)
        if tool == "enfuse":
            enfuse = run
        if tool == "focus-stack":
            focus_stack = run
        if run.error:
            print(f"{label:<{stack}} {tool:<{width}} {run.seconds:>8.1f} {run.peak_mib:>9.0f}  failed ({run.error})")
            continue
        quality = "-"
        if truth is not None:
            quality = f"{psnr(np.rint(to_gray(read_output(output)) * 255), truth):.2f}"
        ratio = f"{run.seconds / enfuse.seconds:.1f}" if enfuse and not enfuse.error else "-"
        versus = f"{run.seconds / focus_stack.seconds:.1f}" if focus_stack and not focus_stack.error else "-"
        columns = f"{run.seconds:>8.1f} {run.peak_mib:>9.0f} {quality:>8} {ratio:>6} {versus:>6}"
        print(f"{label:<{stack}} {tool:<{width}} {columns}")
        sys.stdout.flush()
        output.unlink(missing_ok=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stacks", default="synthetic,pcb10,plankton5")
    parser.add_argument("--memory-limit", type=float, default=16.0, help="GiB of address space for focusfuse")
    args = parser.parse_args()
    available = tools()
    memory_limit = int(args.memory_limit * 2**30)
    widths = (26, 12)
    print_header(widths)
    with tempfile.TemporaryDirectory() as scratch_name:
        scratch = Path(scratch_name)
        for label, files, truth, absent in stacks(args.stacks.split(","), scratch):
            if absent:
                print(f"{label:<26} skipped: {absent}")
                continue

            def measure(tool: str, prefix: list[str], output: Path, files: list[Path] = files) -> Run:
                limit = memory_limit if tool == "focusfuse" else None
                return run_measured(command_for(tool, prefix, files, output), limit)

            compare_tools(label, available, measure, truth, scratch, widths)


if __name__ == "__main__":
    main()
