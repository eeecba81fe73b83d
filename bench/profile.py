#!/usr/bin/env python3
"""Where every second of a fusion goes: by stage (the timing report) and by operation (torch's profiler).

Fuses ../shared/data/stacks/pcb10 (or --stack DIR; --crop WxH fuses the centre of each
slice, written to a scratch folder first) once with ``fuse_stack`` and the given
--speed, in this process, on the CPU. Prints the stages of the timing report with
their share of the total, then the torch operations by their own CPU time (the
profiler's self time: a convolution's kernels, not its Python caller), and the part
of the total that no torch operation accounts for (Python, numpy, reading, writing).
The profiler adds its own overhead: compare stage times against a run without it
(--no-ops prints the stages alone).
Usage: python bench/profile.py [--stack DIR] [--crop 1024x768] [--speed default] [--top 18] [--no-ops]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import cv2
import torch

from focusfuse import fuse_stack
from focusfuse.io.reader import open_stack

PCB10 = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "stacks" / "pcb10"


def cropped_stack(folder: Path, crop: str, scratch: Path) -> list[Path]:
    """The centre ``WxH`` of every slice, as PNGs in ``scratch``."""
    width, height = (int(part) for part in crop.lower().split("x"))
    source = open_stack([folder])
    paths = []
    for index in range(len(source)):
        image = source.read(index)
        top, left = (image.shape[0] - height) // 2, (image.shape[1] - width) // 2
        part = image[top : top + height, left : left + width]
        paths.append(scratch / f"z{index:03d}.png")
        cv2.imwrite(str(paths[-1]), part[:, :, ::-1] if part.ndim == 3 else part)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--stack", type=Path, default=PCB10)
    parser.add_argument("--crop", help="fuse the centre WxH of every slice")
    parser.add_argument("--speed", default="default")
    parser.add_argument("--top", type=int, default=18, help="operations to list")
    parser.add_argument("--no-ops", action="store_true", help="stages only, without the profiler's overhead")
    arguments = parser.parse_args()
    if not arguments.stack.is_dir():
        raise SystemExit(f"{arguments.stack} not found")
    with tempfile.TemporaryDirectory(prefix="focusfuse-profile-") as scratch:
        inputs = cropped_stack(arguments.stack, arguments.crop, Path(scratch)) if arguments.crop else [arguments.stack]
        options = {"device": "cpu", "output": Path(scratch) / "fused.png"}
        if arguments.speed != "default":
            options["speed"] = arguments.speed
        fuse_stack(inputs[:2], **{**options, "output": Path(scratch) / "warm.png"})  # weights, threads, allocator
        started = time.perf_counter()
        if arguments.no_ops:
            result = fuse_stack(inputs, **options)
            profile = None
        else:
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
                result = fuse_stack(inputs, **options)
        wall = time.perf_counter() - started
    timing = result.timing
    print(
        f"{arguments.stack.name}{' ' + arguments.crop if arguments.crop else ''}: {timing['n_slices']} slices "
        f"{timing['width']}x{timing['height']}, --speed {arguments.speed}, {timing['threads']} threads, "
        f"feature precision {timing.get('feature_precision', 'float32')}: {wall:.2f} s wall "
        f"({'without' if profile is None else 'with'} the profiler)"
    )
    total = timing["total_s"]
    print(f"{'stage':<14} {'s':>8} {'share':>6}")
    for stage, seconds in sorted(timing["stages_s"].items(), key=lambda item: -item[1]):
        print(f"{stage:<14} {seconds:>8.2f} {seconds / total:>6.1%}")
    if profile is None:
        return
    events = [event for event in profile.key_averages() if event.key.startswith("aten::")]
    self_total = sum(event.self_cpu_time_total for event in events) / 1e6
    print(f"\ntorch operations, by own CPU time (all of them: {self_total:.2f} s of {wall:.2f} s wall)")
    print(f"{'operation':<34} {'calls':>7} {'s':>8} {'share':>6}")
    for event in sorted(events, key=lambda e: -e.self_cpu_time_total)[: arguments.top]:
        seconds = event.self_cpu_time_total / 1e6
        print(f"{event.key:<34} {event.count:>7} {seconds:>8.2f} {seconds / wall:>6.1%}")
    print(f"{'(no torch operation)':<34} {'':>7} {wall - self_total:>8.2f} {(wall - self_total) / wall:>6.1%}")


if __name__ == "__main__":
    main()
