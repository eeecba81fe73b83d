"""``fuse_stack``: the library call behind ``focusfuse stack``.

Open the stack, check the outputs can be written, load the weights on the chosen
device, run a strategy, and (when asked) write the fused image, the index map and
the timing report.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from focusfuse import __version__
from focusfuse.errors import FocusFuseError
from focusfuse.fusion.alignment import ALIGN_MODES, AlignMode, StackAlignment, estimate_alignment
from focusfuse.fusion.compositing import COMPOSITES, PYRAMID_LEVELS, Composite, PyramidBlend
from focusfuse.fusion.strategies import (
    SLICES_PER_DECISION,
    STRATEGIES,
    Progress,
    StackContext,
    Strategy,
    fuse_calibrated_paper,
    fuse_running_best,
    fuse_serial,
)
from focusfuse.fusion.timing import StageClock
from focusfuse.io.color import unit_scale
from focusfuse.io.filecheck import available_memory
from focusfuse.io.reader import StackSource, open_stack
from focusfuse.io.writer import check_format_holds, check_free_space, check_output_path, write_image, write_json
from focusfuse.model.weights import find_weights, load_model

DEFAULT_BATCH_SIZE = 2


@dataclass
class FusionResult:
    """The fused image (source dtype), the 0-based index map and the timing record."""

    fused: np.ndarray
    index_map: np.ndarray
    timing: dict


def resolve_device(device: str) -> torch.device:
    """``auto`` is CUDA when torch sees a GPU, else CPU; ``cuda`` without one is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise FocusFuseError(f"--device {device}: no CUDA device is available to torch {torch.__version__}")
    if device != "cpu" and not device.startswith("cuda"):
        raise FocusFuseError(f"--device {device}: use auto, cpu or cuda")
    return torch.device(device)


@contextmanager
def full_float32() -> Iterator[None]:
    """Convolutions in IEEE float32 on CUDA, not TF32 (cuDNN's default).

    The decision path ends in sigmoid(1000 z): TF32's rounding of z (10-bit
    mantissa) flips decisions, and the paper's calibration breaks its saturated
    ties differently, so a GPU would pick other slices than the CPU.
    """
    cudnn = torch.backends.cudnn
    with cudnn.flags(
        enabled=cudnn.enabled, benchmark=cudnn.benchmark, deterministic=cudnn.deterministic, allow_tf32=False
    ):
        yield


def intensity_mapping(first_slice: np.ndarray) -> tuple[float, float]:
    """(offset, scale) taking the stack to [0, 1] for the network.

    Integers use their full range. Float32 already in [0, 1] is used as is; other
    float data is mapped by the first slice's range, the same for every slice, so
    sharpness stays comparable between slices.
    """
    if first_slice.dtype.kind == "u":
        return 0.0, unit_scale(first_slice.dtype)
    low, high = float(first_slice.min()), float(first_slice.max())
    if low >= 0.0 and high <= 1.0:
        return 0.0, 1.0
    return low, max(high - low, 1e-12)


# Peak resident memory of a CPU fusion per pixel of one slice: the 64-channel activities
# (256 bytes a pixel each) of the slices, mosaics and decision paths held at once
# (bench/peers.py: pcb10, 3.1 Mpx, peaks at 7.0 GB; bench/memory.py: 0.26 Mpx at
# 0.8 GB), plus what torch and the process hold anyway.
PLAN_BYTES_PER_PIXEL = {"calibrated": 2300, "serial": 2300, "calibrated-paper": 3300}
PLAN_BASE_BYTES = 400 * 2**20


def check_plan_fits_memory(label: str, height: int, width: int, strategy: str) -> None:
    """Refuse, in seconds, a fusion whose activities cannot fit the memory available.

    The whole image goes through the network at once, so a 20-megapixel slice needs
    about 45 GB; without this check it would run for a minute and die allocating.
    """
    available = available_memory()
    needed = PLAN_BASE_BYTES + PLAN_BYTES_PER_PIXEL.get(strategy, 3300) * height * width
    if available is not None and needed > available:
        raise FocusFuseError(
            f"{label}: fusing {width}x{height} slices needs about {needed / 2**30:.1f} GiB of memory, "
            f"{available / 2**30:.1f} GiB are available (fusion in tiles is not built yet)"
        )


def default_index_map_path(output: Path) -> Path:
    """NAME.index.png beside NAME.EXT."""
    return output.with_name(output.stem + ".index.png")


def default_timing_path(output: Path) -> Path:
    """NAME.timing.json beside NAME.EXT."""
    return output.with_name(output.stem + ".timing.json")


def aligned_source(source: StackSource, alignment: StackAlignment) -> StackSource:
    """The stack as the strategies see it: every slice warped into the reference frame (and cropped)."""
    original = source.read
    return StackSource(labels=source.labels, paths=source.paths, reader=lambda j: alignment.warp(j, original(j)))


def _composite_by_pyramid(context: StackContext, index_map: np.ndarray, levels: int) -> np.ndarray:
    """The pyramid blend, reading each used slice once more.

    The ``composite`` stage includes that second read; its time is shared among the slices.
    """
    clock = context.clock
    started = clock.now()
    with clock.stage("composite"):
        blend = PyramidBlend(index_map, levels)
        for j in blend.used_slices(len(context.source)):
            blend.add(j, context.first_slice if j == 0 else context.source.read(j))
        fused = blend.result()
    share = (clock.now() - started) / len(clock.per_slice)
    clock.per_slice[:] = [seconds + share for seconds in clock.per_slice]
    return fused


def fuse_stack(
    inputs: Sequence[str | os.PathLike],
    *,
    output: str | os.PathLike | None = None,
    index_map_path: str | os.PathLike | None = None,
    timing_path: str | os.PathLike | None = None,
    strategy: Strategy = "calibrated",
    device: str = "auto",
    batch_size: int = DEFAULT_BATCH_SIZE,
    weights: str | os.PathLike | None = None,
    progress: Progress | None = None,
    slices_per_decision: int = SLICES_PER_DECISION,
    adjacent_by_sharpness: bool = True,
    fill_flat: bool = True,
    composite: Composite = "pyramid",
    pyramid_levels: int = PYRAMID_LEVELS,
    align: AlignMode = "none",
    crop: bool = False,
) -> FusionResult:
    """Fuse a z-stack into one all-in-focus image and an index map.

    Args:
        inputs: a directory, image files (order kept) or one multipage TIFF.
        output: where to write the fused image (.png, .tif, .jpg); nothing is written when None.
        index_map_path, timing_path: default to NAME.index.png and NAME.timing.json beside ``output``.
        strategy: ``calibrated`` (N feature extractions, running best),
            ``calibrated-paper`` (Eq. 19 as published) or ``serial`` (one by one).
        device: ``auto``, ``cpu`` or ``cuda``.
        batch_size: slices whose features (and, for calibrated-paper, decision paths) run together.
        weights: weights file; else $FOCUSFUSE_WEIGHTS, else the shipped weights.
        progress: called with (slices done, slices in all).
        slices_per_decision: ``calibrated`` only: new slices pre-selected by feature
            sharpness before each decision path (1: a decision path per slice).
        adjacent_by_sharpness: ``calibrated`` only: let feature sharpness, not the
            decision path, choose between adjacent slices on textured ground.
        fill_flat: ``calibrated`` only: pixels no slice shows textured take their slice
            from the textured pixels around them.
        composite: how the calibrated strategies make the fused image from the index
            map: ``pyramid`` blends the slices in a Laplacian pyramid (no seams where
            the choice changes), ``select`` copies each pixel from its slice (exact
            source intensities). Serial and pair fusion blend by their decision maps.
        pyramid_levels: levels of the ``pyramid`` blend below full resolution.
        align: register every slice to the middle one before fusing (neighbour to
            neighbour, chained): ``translation``, ``similarity`` (scale, rotation and
            shift: drift and focus breathing), ``affine``, or ``none``.
        crop: crop the result to the area that every aligned slice covers.
    Returns:
        FusionResult with the fused array in the input dtype.
    """
    if strategy not in STRATEGIES:
        raise FocusFuseError(f"--strategy {strategy}: use one of {', '.join(STRATEGIES)}")
    if batch_size < 1:
        raise FocusFuseError(f"--batch-size {batch_size}: must be at least 1")
    if align not in ALIGN_MODES:
        raise FocusFuseError(f"--align {align}: use one of {', '.join(ALIGN_MODES)}")
    if composite not in COMPOSITES:
        raise FocusFuseError(f"--composite {composite}: use one of {', '.join(COMPOSITES)}")
    if pyramid_levels < 0:
        raise FocusFuseError(f"pyramid_levels {pyramid_levels}: must be at least 0")
    if slices_per_decision < 1:
        raise FocusFuseError(f"slices_per_decision {slices_per_decision}: must be at least 1")
    torch_device = resolve_device(device)
    clock = StageClock(torch_device)
    source = open_stack(inputs)
    if len(source) < 2:
        raise FocusFuseError(f"{source.labels[0]}: a stack needs at least 2 slices, got 1")

    targets: list[Path] = []
    if output is not None:
        output = Path(output)
        index_map_path = Path(index_map_path) if index_map_path else default_index_map_path(output)
        timing_path = Path(timing_path) if timing_path else default_timing_path(output)
        targets = [output, index_map_path, timing_path]
        if len({p.resolve() for p in targets}) < 3:
            raise FocusFuseError(f"{output}: the fused image, index map and timing report need three different paths")
        for path in targets:
            check_output_path(path, inputs=source.paths, report=path == timing_path)

    if torch_device.type == "cpu" and source.declared_size is not None:  # from the headers, before decoding
        check_plan_fits_memory(source.labels[0], *source.declared_size, strategy)
    with clock.stage("load_weights"):
        weights_path = find_weights(weights)
        model = load_model(weights_path, torch_device)
    with clock.stage("read"):
        first_slice = source.read(0)
    # What the first slice tells is checked before alignment reads the whole stack.
    if output is not None:
        fused_path, index_path, _ = targets
        channels = 1 if first_slice.ndim == 2 else first_slice.shape[2]
        check_format_holds(fused_path, first_slice.dtype, channels)
        check_format_holds(index_path, np.dtype(np.uint16 if len(source) > 256 else np.uint8), 1)
        # Uncompressed sizes bound what the fused image and the index map can take.
        check_free_space(targets, first_slice.nbytes + 2 * first_slice.shape[0] * first_slice.shape[1] + 2**20)
    if torch_device.type == "cpu" and source.declared_size is None:
        check_plan_fits_memory(source.labels[0], first_slice.shape[0], first_slice.shape[1], strategy)
    with clock.stage("align"):
        alignment = estimate_alignment(source.read, len(source), align, crop=crop)
    if alignment.active:
        source = aligned_source(source, alignment)
        with clock.stage("read"):
            first_slice = source.read(0)
    offset, scale = intensity_mapping(first_slice)
    context = StackContext(
        model=model,
        source=source,
        first_slice=first_slice,
        device=torch_device,
        clock=clock,
        intensity_offset=offset,
        intensity_scale=scale,
        progress=progress or (lambda done, total: None),
    )
    used_strategy = "pair" if len(source) == 2 else strategy
    with torch.inference_mode(), full_float32():
        if used_strategy == "calibrated":
            fused, index_map = fuse_running_best(
                context, batch_size, slices_per_decision, adjacent_by_sharpness, fill_flat
            )
        elif used_strategy == "calibrated-paper":
            fused, index_map = fuse_calibrated_paper(context, batch_size)
        else:
            fused, index_map = fuse_serial(context)
    used_composite = composite if used_strategy.startswith("calibrated") else "decision-map blend"
    if used_composite == "pyramid":
        fused = _composite_by_pyramid(context, index_map, pyramid_levels)

    height, width = first_slice.shape[:2]
    timing = {
        "stack": source.labels[0] if len(source.paths) == 1 else str(Path(source.labels[0]).parent),
        "n_slices": len(source),
        "height": height,
        "width": width,
        "channels": 1 if first_slice.ndim == 2 else first_slice.shape[2],
        "dtype": str(first_slice.dtype),
        "device": str(torch_device),
        "strategy": used_strategy,
        "batch_size": batch_size if used_strategy.startswith("calibrated") else 1,
        "slices_per_decision": slices_per_decision if used_strategy == "calibrated" else 1,
        "adjacent_by_sharpness": adjacent_by_sharpness and used_strategy == "calibrated",
        "fill_flat": fill_flat and used_strategy == "calibrated",
        "composite": used_composite,
        "alignment": alignment.report(),
        "pyramid_levels": pyramid_levels if used_composite == "pyramid" else None,
        "weights": str(weights_path),
        "focusfuse_version": __version__,
        "torch_version": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "stages_s": {},
        "per_slice_s": [round(s, 6) for s in clock.per_slice],
        "total_s": 0.0,
    }
    result = FusionResult(fused=fused, index_map=index_map, timing=timing)
    if targets:
        fused_path, index_path, timing_file = targets
        with clock.stage("write"):
            write_image(fused_path, fused)
            write_image(index_path, index_map)
        timing["outputs"] = {"fused": str(fused_path), "index_map": str(index_path), "timing": str(timing_file)}
    timing["stages_s"] = {name: round(seconds, 6) for name, seconds in clock.stages.items()}
    timing["total_s"] = round(clock.total(), 6)
    if targets:
        write_json(timing_file, timing)
    return result
