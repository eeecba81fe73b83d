"""``fuse_stack``: the library call behind ``focusfuse stack``.

Open the stack, check the outputs can be written, load the weights on the chosen
device, run a strategy, and (when asked) write the fused image, the index map and
the timing report.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import platform
import resource
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from focusfuse import __version__
from focusfuse.errors import FocusFuseError
from focusfuse.fusion.alignment import ALIGN_MODES, AlignMode, StackAlignment, estimate_alignment
from focusfuse.fusion.channels import (
    ChannelView,
    channel_texture,
    check_reference_channel,
    reference_record,
    select_by_index,
)
from focusfuse.fusion.compositing import COMPOSITES, PYRAMID_LEVELS, Composite, composite_pyramid, recorded_range
from focusfuse.fusion.height import height_map, height_preview
from focusfuse.fusion.resolution import (
    SPEEDS,
    Speed,
    decision_size,
    enlarge_index_map,
    enlarge_mask,
    network_precision,
    reduced_stack,
    refine_boundaries,
    registration_side,
    slices_per_decision_for,
    warp_interpolation,
)
from focusfuse.fusion.strategies import (
    STRATEGIES,
    Precision,
    Progress,
    StackContext,
    Strategy,
    fill_flat_regions,
    fuse_calibrated_paper,
    fuse_serial,
    running_best_choice,
    textured_pixels,
)
from focusfuse.fusion.tiling import (
    DEFAULT_MAX_MEMORY,
    MemoryPlan,
    freed_memory_reused,
    fuse_tiles,
    image_tiles,
    measure_statistics,
    mosaic_side,
    plan_memory,
    sample_mosaic,
    take_slice_times,
)
from focusfuse.fusion.timing import StageClock
from focusfuse.io.color import unit_scale
from focusfuse.io.filecheck import available_memory
from focusfuse.io.microscope import SeriesSelection
from focusfuse.io.reader import StackSource, open_channel_stack, open_stack
from focusfuse.io.slice_cache import DecodedStack, RowReader
from focusfuse.io.writer import OutputSet, check_format_holds, check_free_space, check_output_path, output_stem
from focusfuse.model.network import GACN
from focusfuse.model.weights import find_weights, shared_model

# Slices whose features run together. 1 and 2 fuse identically at the same speed on a
# 2-core CPU (pcb10 1024x1024 crop: 21.9 and 21.7 s), and 1 needs 460 bytes a pixel less.
DEFAULT_BATCH_SIZE = 1


@dataclass
class FusionResult:
    """The fused image (source dtype), the 0-based index map, the timing record and the height (when asked for)."""

    fused: np.ndarray
    index_map: np.ndarray
    timing: dict
    height: np.ndarray | None = None


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


def memory_budget(max_memory: int | None) -> int:
    """The budget a plan must fit: ``max_memory`` (default 2 GiB), at most what the machine has free now."""
    budget = DEFAULT_MAX_MEMORY if max_memory is None else max_memory
    available = available_memory()
    return budget if available is None else min(budget, available)


def default_index_map_path(output: Path) -> Path:
    """NAME.index.png beside NAME.EXT (and beside NAME.ome.tif)."""
    return output.with_name(output_stem(output) + ".index.png")


def default_timing_path(output: Path) -> Path:
    """NAME.timing.json beside NAME.EXT (and beside NAME.ome.tif)."""
    return output.with_name(output_stem(output) + ".timing.json")


def open_fusion_source(
    inputs: Sequence[str | os.PathLike], selection: SeriesSelection, channel_folders: bool
) -> StackSource:
    """The stack ``fuse_stack`` and ``focusfuse info`` read: folders as channels, or one stack
    (a microscope file's z-stack picked by ``selection``), of at least two slices."""
    if channel_folders and selection.named:
        raise FocusFuseError(f"--channels: {selection.options()} names a stack of a microscope file, not of folders")
    source = open_channel_stack(inputs) if channel_folders else open_stack(inputs, selection)
    if len(source) < 2:
        raise FocusFuseError(f"{source.labels[0]}: a stack needs at least 2 slices, got 1")
    return source


def made_from_name(source: StackSource) -> str:
    """The stack as a person names it: the folder, or the file with its scene and time (``a.czi[scene=1]``)."""
    if len(source.paths) > 1:
        return str(Path(source.labels[0]).parent)
    label = source.labels[0]
    return label.replace("[z=0]", "").replace(",z=0]", "]")


def _aligned_slices(decoded: DecodedStack, alignment: StackAlignment) -> DecodedStack:
    """The decoded slices warped into the reference frame (and cropped), in a new store that
    takes each one from the old (which holds it no longer)."""
    warped_first = alignment.warp(0, decoded.take(0))
    return DecodedStack(
        lambda j: alignment.warp(j, decoded.take(j)), decoded.n_slices, warped_first, in_memory=decoded.in_memory
    )


def _composite_by_pyramid(
    clock: StageClock,
    read: Callable[[int], np.ndarray],
    read_rows: RowReader,
    n_slices: int,
    index_map: np.ndarray,
    levels: int,
    max_pixels: int,
    full_range: float | np.ndarray | None,
) -> np.ndarray:
    """The pyramid composite of the decoded slices ``read(j)``; its time is shared among the slices."""
    started = clock.now()
    with clock.stage("composite"):
        fused = composite_pyramid(
            read, index_map, n_slices, levels, max_pixels=max_pixels, full_range=full_range, read_rows=read_rows
        )
    share = (clock.now() - started) / len(clock.per_slice)
    clock.per_slice[:] = [seconds + share for seconds in clock.per_slice]
    return fused


def input_files(paths: Sequence[Path]) -> list[dict]:
    """Name, size and mtime of every input file: what a result was made from.

    Taken before any pixel is read, so a slice rewritten while the stack is fused
    leaves a record that no longer matches it (``focusfuse batch`` then fuses it again).
    """
    files = []
    for path in paths:
        if path.is_dir():  # an OME-Zarr image: its chunks are its contents
            size, newest = folder_contents(path)
            files.append({"name": path.name, "bytes": size, "mtime_ns": newest})
            continue
        stat = path.stat()
        files.append({"name": path.name, "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns})
    return files


def folder_contents(folder: Path) -> tuple[int, int]:
    """Bytes of every file under ``folder`` and the newest change (mtime or ctime, ns) of any file or folder in it."""
    size, newest = 0, 0
    for current, _, names in os.walk(folder):  # the folder itself first
        here = Path(current)
        status = here.stat()
        newest = max(newest, status.st_mtime_ns, status.st_ctime_ns)
        for name in names:
            status = (here / name).stat()
            size += status.st_size
            newest = max(newest, status.st_mtime_ns, status.st_ctime_ns)
    return size, newest


def result_options(
    *,
    strategy: str,
    composite: str,
    align: str,
    crop: bool,
    prune: bool,
    pyramid_levels: int = PYRAMID_LEVELS,
    slices_per_decision: int | None = None,
    adjacent_by_sharpness: bool = True,
    fill_flat: bool = True,
    speed: str = "default",
) -> dict:
    """The options of ``fuse_stack`` that change its result, as asked for (the timing report keeps them).

    Not among them: the device (CPU and CUDA choose the same slices), the batch size,
    and the memory budget (tiles agree with the whole image on over 99.8% of pixels).
    """
    options = {
        "strategy": strategy,
        "composite": composite,
        "align": align,
        "crop": crop,
        "prune": prune,
        "pyramid_levels": pyramid_levels,
        "slices_per_decision": (
            slices_per_decision if slices_per_decision is not None else slices_per_decision_for(speed)  # type: ignore[arg-type]
        ),
        "adjacent_by_sharpness": adjacent_by_sharpness,
        "fill_flat": fill_flat,
    }
    if speed != "default":  # so that results made before --speed existed still count as the default's
        options["speed"] = speed
    return options


def peak_resident_bytes() -> int:
    """This process's peak resident memory so far (Linux reports kilobytes)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def stack_memory_plan(
    source: StackSource,
    height: int,
    width: int,
    channels: int,
    itemsize: int,
    strategy: str,
    batch_size: int,
    budget: int,
    decided_at: tuple[int, int] | None = None,
) -> MemoryPlan:
    """The memory plan for fusing ``source`` within ``budget``; the one-line refusal when none fits.

    ``decided_at``: the size of the image the decisions see (``decision_size``), when it is
    smaller: the plan's tiles are then those of that image, the ones the network runs in.
    """
    tileable = strategy in ("calibrated", "calibrated-paper", "pair")
    try:
        plan = plan_memory(
            height,
            width,
            channels,
            itemsize,
            len(source),
            strategy="serial" if strategy == "pair" else strategy,
            batch_size=batch_size,
            budget=budget,
            tileable=tileable,
        )
    except ValueError as error:
        raise FocusFuseError(
            f"{source.labels[0]}: {error}; the budget is {budget / 2**30:.1f} GiB "
            f"(--max-memory, at most the memory available)"
        ) from None
    if decided_at is not None and decided_at != (height, width):
        plan = dataclasses.replace(plan, tiles=len(image_tiles(*decided_at, plan.tile_pixels, plan.halo)))
    return plan


def _fuse_decoded(
    read: Callable[[int], np.ndarray],
    source: StackSource,
    model: GACN,
    plan: MemoryPlan,
    *,
    clock: StageClock,
    device: torch.device,
    strategy: str,
    batch_size: int,
    slices_per_decision: int,
    adjacent_by_sharpness: bool,
    fill_flat: bool,
    composite: Composite,
    pyramid_levels: int,
    prune: bool,
    progress: Progress,
    read_rows: RowReader,
    decided_at: tuple[int, int],
    precision: Precision,
    composite_store: DecodedStack | None = None,
) -> tuple[np.ndarray, np.ndarray, str, int, torch.Tensor | None]:
    """Run the strategy on the decoded slices ``read(j)``, whole or in tiles, then fill and composite.

    ``read_rows`` reads rows of a slice, so that tiles and composite strips never hold a
    whole slice. ``composite_store``: the whole slices, when ``read`` gives one channel of
    them (a multichannel stack decided on its reference channel): every channel is then
    composited from them under the index map, by the pyramid or by copying.
    ``decided_at`` (``resolution.decision_size``): when smaller than the slices, the strategy
    decides on the slices shrunk to it, and the fused image is made from the full-size
    slices under the enlarged index map. ``precision``: the feature path's and, under
    ``calibrated``, the decision path's.
    Returns the fused image, the index map, the composite used, the slice-tiles run,
    and (``calibrated``) the sharpest any slice is at each pixel (on the decision image).
    """
    used_composite = composite if strategy.startswith("calibrated") else "decision-map blend"
    if composite_store is not None and used_composite != "pyramid":
        used_composite = "select"  # a decision-map blend of one channel cannot make the others
    first_slice = read(0)
    full_range: float | np.ndarray | None = None  # the pyramid composite's, from the full-size slices it blends
    if used_composite == "pyramid":
        full_range = recorded_range(first_slice if composite_store is None else composite_store.read(0))
    full_read, full_rows = read, read_rows
    full_size = first_slice.shape[:2]
    reduced = decided_at != full_size
    smaller = None
    if reduced:
        smaller = reduced_stack(read, len(source), decided_at, in_memory=plan.slices_in_memory)
        read, read_rows = smaller.read, smaller.read_rows
        first_slice = read(0)
    try:
        # The tiles' own pixels are the result only where nothing composites them afresh from the slices.
        keep_fused = used_composite != "pyramid" and composite_store is None and not reduced
        whole = StackSource(labels=source.labels, paths=source.paths, reader=read)
        offset, scale = intensity_mapping(first_slice)
        n_slices = len(source)
        height, width = first_slice.shape[:2]
        del first_slice  # read from the temporary file, it would be a whole slice beside every tile's work
        # Tiles where the image the decisions see is larger than a tile may be (a reduced one may fit whole).
        tiles = image_tiles(height, width, plan.tile_pixels, plan.halo)

        def make_context(part: StackSource, first: np.ndarray) -> StackContext:
            return StackContext(
                model=model,
                source=part,
                first_slice=first,
                device=device,
                clock=clock,
                intensity_offset=offset,
                intensity_scale=scale,
                progress=lambda done, total: None,
                precision=precision,
            )

        def run(context: StackContext) -> tuple[np.ndarray, np.ndarray, torch.Tensor | None]:
            if strategy == "calibrated":
                return running_best_choice(context, batch_size, slices_per_decision, adjacent_by_sharpness)
            if strategy == "calibrated-paper":
                return (*fuse_calibrated_paper(context, batch_size), None)
            return (*fuse_serial(context), None)

        slice_times = [0.0] * n_slices
        heap = freed_memory_reused() if strategy == "calibrated" else contextlib.nullcontext()
        with torch.inference_mode(), full_float32(), heap:
            statistics = None
            if plan.tile_pixels is not None and len(tiles) > 1:
                started = len(clock.per_slice)
                mosaic = sample_mosaic(height, width, mosaic_side(height, width, plan.tile_pixels))
                statistics = measure_statistics(mosaic, make_context, whole, run)
                take_slice_times(clock, started, list(range(n_slices)), slice_times)
            tiled = fuse_tiles(
                tiles,
                whole,
                make_context,
                run,
                statistics,
                progress,
                clock=clock,
                prune=prune and strategy == "calibrated",
                slice_times=slice_times,
                read_rows=read_rows,
                keep_fused=keep_fused,
            )
            clock.per_slice[:] = slice_times
            fused, index_map = tiled.fused, tiled.index_map
            peak_sharpness, slice_tiles_run = tiled.peak_sharpness, tiled.slice_tiles_run
            if strategy == "calibrated" and fill_flat and peak_sharpness is not None:
                fill_flat_regions(make_context(whole, read(0)), fused, index_map, peak_sharpness.to(device))
        if reduced:
            with clock.stage("enlarge"):
                index_map = enlarge_index_map(index_map, full_size)
                index_map = refine_boundaries(index_map, full_read, decided_at[0] / full_size[0])
            read, read_rows = full_read, full_rows
            fused = None
            if used_composite == "select" and composite_store is None:
                with clock.stage("composite"):
                    fused = select_by_index(read, index_map, n_slices)
    finally:
        if smaller is not None:
            smaller.close()
    if used_composite == "pyramid":
        paint_read, paint_rows = (
            (read, read_rows) if composite_store is None else (composite_store.read, composite_store.read_rows)
        )
        fused = _composite_by_pyramid(
            clock, paint_read, paint_rows, n_slices, index_map, pyramid_levels, plan.composite_pixels, full_range
        )
    elif composite_store is not None:
        with clock.stage("composite"):
            fused = select_by_index(composite_store.read, index_map, n_slices)
    assert fused is not None
    return fused, index_map, used_composite, slice_tiles_run, peak_sharpness


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
    slices_per_decision: int | None = None,
    adjacent_by_sharpness: bool = True,
    fill_flat: bool = True,
    composite: Composite = "pyramid",
    pyramid_levels: int = PYRAMID_LEVELS,
    align: AlignMode = "auto",
    crop: bool = False,
    max_memory: int | None = None,
    prune: bool = False,
    height_map_path: str | os.PathLike | None = None,
    height_preview_path: str | os.PathLike | None = None,
    z_step: float | None = None,
    fill_height: bool = False,
    channel_folders: bool = False,
    reference_channel: int | None = None,
    speed: Speed = "default",
    scene: int | str | None = None,
    position: int | str | None = None,
    time: int | None = None,
) -> FusionResult:
    """Fuse a z-stack into one all-in-focus image and an index map.

    Args:
        inputs: a directory, image files (order kept), one multipage TIFF, or one
            CZI, ND2, LIF or OME-Zarr file (with focusfuse[formats]).
        output: where to write the fused image (.png, .tif, .jpg); nothing is written when None.
        index_map_path, timing_path: default to NAME.index.png and NAME.timing.json beside ``output``.
        strategy: ``calibrated`` (N feature extractions, running best),
            ``calibrated-paper`` (Eq. 19 as published) or ``serial`` (one by one).
        device: ``auto``, ``cpu`` or ``cuda``.
        batch_size: slices whose features (and, for calibrated-paper, decision paths) run together.
        weights: weights file; else $FOCUSFUSE_WEIGHTS, else the shipped weights.
        progress: called with (slices done, slices in all).
        slices_per_decision: ``calibrated`` only: new slices pre-selected by feature
            sharpness before each decision path (1: a decision path per slice); None:
            4, or where the decisions are made on shrunk slices 5 (6 under ``fast``)
            (``resolution.slices_per_decision_for``).
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
            shift: drift and focus breathing), ``affine``, ``none``, or ``auto`` (the
            default): a similarity applied only when some slice moved by many times the
            estimate's own standard error (``AUTO_MIN_SIGNIFICANCE``), so that a stack
            that did not move is fused from its slices as read, and a pair as given.
        crop: crop the result to the area that every aligned slice covers.
        max_memory: memory budget in bytes (default 2 GiB, at most what is available):
            above it the image is fused in tiles (``tiling.py``).
        prune: ``calibrated`` only: in each tile, run the network only on the slices
            that a focus screen finds can win somewhere in it (``pruning.py``).
        height_map_path: ``calibrated``, 3+ slices: write the surface height, float32
            TIFF, refined between slices (``height.py``); micrometres when the z-step
            is known, else slice units. NaN where no slice shows texture.
        height_preview_path: the height as a colour-mapped PNG with a colour bar.
        z_step: micrometres between slices; overrides the files' metadata.
        fill_height: give untextured pixels the height filled in from their rims, not NaN.
        channel_folders: ``inputs`` are folders, one per channel, of gray slices.
        reference_channel: the channel whose index map fuses every channel (0-based).
            Default for a stack with a channel axis (TIFF C, ``channel_folders``): the
            channel with the most texture. Given for a colour stack, its channels are
            fused as channels too, instead of by their luminance.
        speed: ``default``, or ``fast``: ``calibrated`` decides on the slices shrunk to
            a long side of ``FAST_DECISION_SIDE`` px and makes the fused image from the
            full-size slices under the enlarged index map (``resolution.py``).
        scene, position, time: which z-stack of a microscope file to fuse: a CZI scene
            or LIF image, an ND2 position (index from 0, or name), a time point.
            Needed where the file holds several; refused for other inputs.
    Returns:
        FusionResult with the fused array in the input dtype (and ``height`` when asked for).
    """
    if strategy not in STRATEGIES:
        raise FocusFuseError(f"--strategy {strategy}: use one of {', '.join(STRATEGIES)}")
    if speed not in SPEEDS:
        raise FocusFuseError(f"--speed {speed}: use one of {', '.join(SPEEDS)}")
    if batch_size < 1:
        raise FocusFuseError(f"--batch-size {batch_size}: must be at least 1")
    if align not in ALIGN_MODES:
        raise FocusFuseError(f"--align {align}: use one of {', '.join(ALIGN_MODES)}")
    if composite not in COMPOSITES:
        raise FocusFuseError(f"--composite {composite}: use one of {', '.join(COMPOSITES)}")
    if pyramid_levels < 0:
        raise FocusFuseError(f"pyramid_levels {pyramid_levels}: must be at least 0")
    if slices_per_decision is not None and slices_per_decision < 1:
        raise FocusFuseError(f"slices_per_decision {slices_per_decision}: must be at least 1")
    if max_memory is not None and max_memory <= 0:
        raise FocusFuseError(f"--max-memory {max_memory}: must be positive")
    if z_step is not None and not z_step > 0:
        raise FocusFuseError(f"--z-step {z_step}: must be a positive number of micrometres")
    if height_map_path is not None and Path(height_map_path).suffix.lower() not in (".tif", ".tiff"):
        raise FocusFuseError(f"{height_map_path}: the height map is a float32 TIFF; name it .tif")
    if height_preview_path is not None and Path(height_preview_path).suffix.lower() != ".png":
        raise FocusFuseError(f"{height_preview_path}: the height preview is a PNG; name it .png")
    wants_height = height_map_path is not None or height_preview_path is not None
    torch_device = resolve_device(device)
    clock = StageClock(torch_device)
    selection = SeriesSelection(scene, position, time)
    source = open_fusion_source(inputs, selection, channel_folders)
    try:
        made_from = input_files(source.paths)
    except OSError as error:
        raise FocusFuseError(f"{error.filename}: {error.strerror}") from error

    used_strategy = "pair" if len(source) == 2 else strategy
    if wants_height and (used_strategy != "calibrated" or len(source) < 3):
        raise FocusFuseError(
            f"{source.labels[0]}: a height map needs --strategy calibrated and at least 3 slices "
            f"(here {used_strategy}, {len(source)} slices)"
        )
    physical = source.physical.with_z_step(z_step, "--z-step")
    height_paths = [Path(p) for p in (height_map_path, height_preview_path) if p is not None]
    for path in height_paths:
        check_output_path(path, inputs=source.paths)

    targets: list[Path] = []
    if output is not None:
        output = Path(output)
        index_map_path = Path(index_map_path) if index_map_path else default_index_map_path(output)
        timing_path = Path(timing_path) if timing_path else default_timing_path(output)
        targets = [output, index_map_path, timing_path]
        if len({p.resolve() for p in targets + height_paths}) < len(targets) + len(height_paths):
            raise FocusFuseError(
                f"{output}: every output (fused image, index map, timing report, height) needs its own path"
            )
        for path in targets:
            check_output_path(path, inputs=source.paths, report=path == timing_path)

    budget = memory_budget(max_memory)
    if source.declared_size is not None:  # from the headers, before any pixel is decoded
        stack_memory_plan(source, *source.declared_size, 3, 2, used_strategy, batch_size, budget)
    with clock.stage("load_weights"):
        weights_path = find_weights(weights)
        model, weights_sha256 = shared_model(weights_path, torch_device)
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
    channels = 1 if first_slice.ndim == 2 else first_slice.shape[2]
    by_channel = source.channel_axis or reference_channel is not None
    check_reference_channel(reference_channel, channels, source.labels[0])
    if by_channel and output is not None and Path(output).suffix.lower() not in (".tif", ".tiff"):
        raise FocusFuseError(f"{output}: a {channels}-channel stack keeps its channel axis in a TIFF; write a .tif")
    height, width = first_slice.shape[:2]
    plan = stack_memory_plan(
        source,
        height,
        width,
        channels,
        first_slice.dtype.itemsize,
        used_strategy,
        batch_size,
        budget,
        decided_at=decision_size(height, width, speed, used_strategy),
    )
    decoded = DecodedStack(source.read, len(source), first_slice, in_memory=plan.slices_in_memory)
    # The store holds slice 0 now; on file, a copy kept here would be a whole slice beside the tiles' work.
    slice_shape, slice_dtype = first_slice.shape, first_slice.dtype
    del first_slice
    channel_report = None
    try:
        decide_read = decoded.read
        reference: int | None = None
        if by_channel:
            with clock.stage("channels"):
                channel_report = reference_record(channel_texture(decoded.read, len(source)), reference_channel)
            reference = channel_report["reference"]
            decide_read = ChannelView(decoded, reference).read
        with clock.stage("align"):
            alignment = estimate_alignment(decide_read, len(source), align, crop=crop, side=registration_side(speed))
            alignment.interpolation = warp_interpolation(speed)
        if alignment.active:
            with clock.stage("align"):
                aligned = _aligned_slices(decoded, alignment)
                aligned.read_all()
            decoded.close()
            decoded = aligned
            slice_shape = decoded.shape
        decided_at = decision_size(slice_shape[0], slice_shape[1], speed, used_strategy)  # after any crop
        shrunk = decided_at != tuple(slice_shape[:2])
        precision = network_precision(torch_device, shrunk)
        used_per_decision = slices_per_decision
        if used_per_decision is None:
            used_per_decision = slices_per_decision_for(speed, shrunk, len(source))
        decisions: DecodedStack | ChannelView = decoded if reference is None else ChannelView(decoded, reference)
        decide_read = decisions.read
        fused, index_map, used_composite, slice_tiles_run, peak_sharpness = _fuse_decoded(
            decide_read,
            source,
            model,
            plan,
            clock=clock,
            device=torch_device,
            strategy=used_strategy,
            batch_size=batch_size,
            slices_per_decision=used_per_decision,
            adjacent_by_sharpness=adjacent_by_sharpness,
            fill_flat=fill_flat,
            composite=composite,
            pyramid_levels=pyramid_levels,
            prune=prune,
            progress=progress or (lambda done, total: None),
            read_rows=decisions.read_rows,
            composite_store=decoded if by_channel else None,  # every channel under one index map
            decided_at=decided_at,
            precision=precision,
        )
        surface = None
        if wants_height:
            with clock.stage("height"):
                textured = None
                if peak_sharpness is not None:
                    textured = textured_pixels(peak_sharpness)[0, 0].cpu().numpy()
                    if textured.shape != index_map.shape:  # decided at reduced resolution
                        textured = enlarge_mask(textured, index_map.shape)
                rows = max(1, plan.composite_pixels // max(1, width)) if plan.composite_pixels else 1024
                surface = height_map(
                    decide_read, len(source), index_map, textured, physical, fill=fill_height, strip_rows=rows
                )
    finally:
        decoded.close()

    height, width = slice_shape[:2]
    timing = {
        "stack": source.labels[0] if len(source.paths) == 1 else str(Path(source.labels[0]).parent),
        "n_slices": len(source),
        "height": height,
        "width": width,
        "channels": 1 if len(slice_shape) == 2 else slice_shape[2],
        "dtype": str(slice_dtype),
        "device": str(torch_device),
        "strategy": used_strategy,
        "batch_size": batch_size if used_strategy.startswith("calibrated") else 1,
        "slices_per_decision": used_per_decision if used_strategy == "calibrated" else 1,
        "adjacent_by_sharpness": adjacent_by_sharpness and used_strategy == "calibrated",
        "fill_flat": fill_flat and used_strategy == "calibrated",
        "composite": used_composite,
        "alignment": alignment.report(),
        "physical": physical.report(),
        "source_format": source.source_format,
        "selection": {"scene": scene, "position": position, "time": time} if selection.named else None,
        "channel_names": list(source.channel_names),
        "channel_fusion": channel_report,
        "icc_profile_bytes": None if source.icc_profile is None else len(source.icc_profile),
        "memory_plan": plan.report(),
        "prune": prune and used_strategy == "calibrated",
        "slice_tiles": {"run": slice_tiles_run, "in_all": plan.tiles * len(source)},
        "pyramid_levels": pyramid_levels if used_composite == "pyramid" else None,
        "weights": str(weights_path),
        "weights_sha256": weights_sha256,
        "inputs": made_from,
        "options": result_options(
            strategy=strategy,
            composite=composite,
            align=align,
            crop=crop,
            prune=prune,
            pyramid_levels=pyramid_levels,
            slices_per_decision=slices_per_decision,
            adjacent_by_sharpness=adjacent_by_sharpness,
            fill_flat=fill_flat,
            speed=speed,
        ),
        "speed": speed,
        "feature_precision": precision,
        "decision_precision": precision if used_strategy == "calibrated" else "float32",
        "decision_size": list(decided_at),
        "focusfuse_version": __version__,
        "torch_version": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "stages_s": {},
        "per_slice_s": [round(s, 6) for s in clock.per_slice],
        "total_s": 0.0,
    }
    result = FusionResult(fused=fused, index_map=index_map, timing=timing, height=surface)
    height_unit = "um" if physical.z_step_um is not None else "slices"
    if surface is not None:
        finite = np.isfinite(surface)
        timing["height_map"] = {
            "unit": height_unit,
            "z_step_um": physical.z_step_um,
            "z_source": physical.z_source,
            "textured_fraction": round(float(finite.mean()), 6),
            "range": [float(surface[finite].min()), float(surface[finite].max())] if finite.any() else None,
            "filled": fill_height,
        }
    # Every output is staged, then all are put in place together: a stop or an error
    # leaves all of them whole or none.
    origin = made_from_name(source)  # named in OME-TIFF outputs
    with OutputSet() as outputs:
        with clock.stage("write"):
            if targets:
                fused_path, index_path, timing_file = targets
                profile = None if by_channel else source.icc_profile
                outputs.image(
                    fused_path,
                    fused,
                    physical,
                    channel_axis=by_channel,
                    icc_profile=profile,
                    channel_names=source.channel_names,
                    description=f"all-in-focus image fused by focusfuse {__version__} from {origin}",
                )
                outputs.image(index_path, index_map)
            if surface is not None and height_map_path is not None:
                outputs.image(
                    Path(height_map_path),
                    surface,
                    physical,
                    description=f"surface height in {'micrometres' if height_unit == 'um' else 'slice units'} "
                    f"(NaN where no slice shows texture), by focusfuse {__version__} from {origin}",
                )
            if surface is not None and height_preview_path is not None:
                outputs.image(Path(height_preview_path), height_preview(surface, height_unit, physical))
        if targets:
            timing["outputs"] = {"fused": str(fused_path), "index_map": str(index_path), "timing": str(timing_file)}
            if height_map_path is not None:
                timing["outputs"]["height_map"] = str(height_map_path)
            if height_preview_path is not None:
                timing["outputs"]["height_preview"] = str(height_preview_path)
        timing["peak_rss_bytes"] = peak_resident_bytes()
        timing["stages_s"] = {name: round(seconds, 6) for name, seconds in clock.stages.items()}
        timing["total_s"] = round(clock.total(), 6)
        if targets:
            outputs.json(timing_file, timing)
    return result
