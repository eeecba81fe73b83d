#!/usr/bin/env python3
"""Seconds per training step of GACN (training.training_step: forward, Dice + Qg, backward, Adam) on a device.

Times the step of ``focusfuse train`` on random data, without making batches, to size
a schedule: with the defaults and in channels-last memory format; on CUDA also with
TF32 off, with cudnn.benchmark on, and under bf16 autocast (timing only: training
does not use it). Usage: python bench/train_step.py [--device cuda] [--crop 156]
"""

from __future__ import annotations

import argparse
import time

import torch

from focusfuse.model.network import GACN
from focusfuse.training.trainer import training_step


def seconds_per_step(
    device: torch.device,
    batch: int,
    crop: int,
    steps: int,
    score_sigma: float,
    channels_last: bool = False,
    bf16: bool = False,
) -> float:
    torch.manual_seed(0)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    model = GACN(score_sigma=score_sigma).to(device, memory_format=layout)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    a, b = (x.contiguous(memory_format=layout) for x in torch.rand(2, batch, 1, crop, crop, device=device))
    truth = (torch.rand(batch, 1, crop, crop, device=device) > 0.5).float()
    precision = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)

    def step() -> None:
        with precision:  # the backward pass too: timing only
            training_step(model, optimizer, a, b, truth, qg_weight=1.0)

    for _ in range(3):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - started) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--crop", type=int, default=156)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--score-sigma", type=float, default=0.0)
    args = parser.parse_args()
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} threads"
    print(
        f"torch {torch.__version__}, {device} ({name}); batch {args.batch_size}, crop {args.crop}, "
        f"score sigma {args.score_sigma}"
    )
    cudnn = torch.backends.cudnn
    settings = [("defaults", {}, {}), ("channels-last", {}, {"channels_last": True})]
    if device.type == "cuda":
        settings += [
            ("TF32 off", {"allow_tf32": False}, {}),
            ("cudnn.benchmark", {"benchmark": True}, {}),
            ("bf16 autocast", {}, {"bf16": True}),
            ("bf16 + ch-last", {"benchmark": True}, {"bf16": True, "channels_last": True}),
        ]
    for label, change, layout in settings:
        flags = {
            "enabled": cudnn.enabled,
            "benchmark": cudnn.benchmark,
            "deterministic": cudnn.deterministic,
            "allow_tf32": cudnn.allow_tf32,
            **change,
        }
        with cudnn.flags(**flags):
            seconds = seconds_per_step(device, args.batch_size, args.crop, args.steps, args.score_sigma, **layout)
        print(f"{label:<16} {seconds * 1000:8.1f} ms per step")


if __name__ == "__main__":
    main()
