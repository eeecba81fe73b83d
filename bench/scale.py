#!/usr/bin/env python3
"""focusfuse at scale beside enfuse and focus-stack, in one run: seconds and peak memory.

Stacks: (a) ../shared/data/stacks/pcb10 (10 x 2048x1536 JPEG, no truth); (b) a
synthetic stack of 64 slices of 2000x1500 with known depth (bench/multislice.py's
generator, noise std 0.01; PSNR against the all-in-focus truth for every tool), and
the same scene in 16 slices, to show whether memory stays flat in N; (c)
../shared/data/stacks/plankton5 (5 x 20 Mpx, real microscope, no truth); (d) the
paper's 26 pairs (../shared/data/pairs26), seconds per pair (each pair its own
process, as a shell loop runs them). Every tool runs as its own process with its
defaults (focusfuse: --max-memory 2G, CPU; also with --speed fast, and on pcb10
and the 64-slice stack with --prune); wall seconds include reading and
writing; peak RSS is the process's (for (d), the largest over the pairs). Peers as in
bench/peers.py; a missing peer or stack is a row that says why.
Usage: python bench/scale.py [--stacks pcb10,synthetic64,synthetic16,plankton5,pairs26] [--tools enfuse,...]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from multislice import write_case
from peers import REAL_STACKS, Run, command_for, compare_tools, print_header, run_measured, tools

from focusfuse.io.reader import open_stack

PAIRS = REAL_STACKS.parent / "pairs26"
STACKS = "pcb10,synthetic64,synthetic16,plankton5,pairs26"
PRUNE_ROWS = ("pcb10", "synthetic 64")


def stack_cases(names: list[str], scratch: Path):
    """(label, list of input-file lists, truth or None, why absent or None) per requested stack."""
    for name in names:
        if name.startswith("synthetic"):
            n_slices = int(name.removeprefix("synthetic"))
            folder = scratch / name
            sharp, _ = write_case(folder, 1500, n_slices, "noise", 0, width=2000)
            yield f"synthetic {n_slices}x2000x1500", [sorted(folder.iterdir())], sharp, None
        elif name == "pairs26":
            firsts = sorted(PAIRS.glob("*_1.png")) if PAIRS.is_dir() else []
            if not firsts:
                yield "pairs26", [], None, f"{PAIRS} not found"
                continue
            pairs = [[first, first.with_name(first.name.replace("_1.png", "_2.png"))] for first in firsts]
            yield f"pairs26 ({len(pairs)} pairs, per pair)", pairs, None, None
        else:
            folder = REAL_STACKS / name
            if not folder.is_dir():
                yield name, [], None, f"{folder} not found"
                continue
            source = open_stack([folder])
            first = source.read(0)
            yield (
                f"{name} {len(source)}x{first.shape[1]}x{first.shape[0]}",
                [[Path(p) for p in source.paths]],
                None,
                None,
            )


def run_all(tool: str, prefix: list[str], inputs: list[list[Path]], output: Path) -> Run:
    """Every input set in turn: seconds per set, the largest peak RSS, the first error."""
    runs = [run_measured(command_for(tool, prefix, files, output)) for files in inputs]
    error = next((run.error for run in runs if run.error), None)
    return Run(sum(run.seconds for run in runs) / len(runs), max(run.peak_mib for run in runs), error)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stacks", default=STACKS)
    parser.add_argument("--tools", help="Only these tools (comma-separated), e.g. enfuse,focus-stack.")
    args = parser.parse_args()
    available = tools()
    focusfuse_prefix = available["focusfuse"][0]
    assert focusfuse_prefix is not None
    widths = (30, 21)
    print_header(widths)
    with tempfile.TemporaryDirectory() as scratch_name:
        scratch = Path(scratch_name)
        for label, inputs, truth, absent in stack_cases(args.stacks.split(","), scratch):
            if absent:
                print(f"{label:<30} skipped: {absent}")
                continue
            rows = dict(available)
            rows["focusfuse --speed fast"] = ([*focusfuse_prefix, "--speed", "fast"], "")
            if label.startswith(PRUNE_ROWS):  # what pruning saves, where there are slices to prune
                rows["focusfuse --prune"] = ([*focusfuse_prefix, "--prune"], "")
            if args.tools:
                rows = {tool: row for tool, row in rows.items() if tool in args.tools.split(",")}

            def measure(tool: str, prefix: list[str], output: Path, inputs: list[list[Path]] = inputs) -> Run:
                return run_all(tool.split()[0], prefix, inputs, output)

            compare_tools(label, rows, measure, truth, scratch, widths)


if __name__ == "__main__":
    main()
