"""Fusion in tiles: memory set by a budget, not by the image.

The network's activities take about 2.5 kB per pixel while a stack is fused, so a
20-megapixel slice would need some 50 GB at once. Above what the budget
(``--max-memory``) allows, the image is cut into overlapping tiles; each tile runs
the whole strategy over every slice, and only its core (the tile without its halo)
goes into the index map. What a decision depends on:

- Pixels around it, out to ``decision_reach`` (computed below from the network's
  layers). The running best chains decision steps, each looking that far around at
  the choice the step before made, so in principle the reach grows with the stack;
  in practice a choice rarely changes because of something that far away, and
  ``TILE_HALO`` is chosen by measured agreement with the whole-image result
  (docs/benchmarks.md, tiling).
- Image-wide quantities, which a tile cannot see, fixed for every tile from a sample
  of the image: a mosaic of crops spread over it (``sample_mosaic``) is fused first,
  and gives every slice's channel SE gates (the feature path's global channel means,
  over the inside of the crops) and the median sharpness of the current choice before
  each decision step (``ImageWideStatistics``).
- The flat-region fill and the peak-sharpness median it starts from: run once on the
  whole index map after the tiles (1 byte a pixel plus a float32 sharpness map).
"""

from __future__ import annotations

import ctypes
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from focusfuse.fusion.compositing import COMPOSITE_BYTES_PER_CHANNEL_PIXEL
from focusfuse.fusion.pruning import candidate_slices
from focusfuse.fusion.strategies import ImageWideStatistics, StackContext
from focusfuse.fusion.timing import StageClock
from focusfuse.io.reader import StackSource
from focusfuse.io.slice_cache import RowReader
from focusfuse.model import refinement
from focusfuse.model.network import SF_RADIUS, DecisionPath

# The sample mosaic: as many crops of SAMPLE_CROP px as a tile holds, spread evenly over the
# image. Left out of the statistics: SAMPLE_MARGIN px inside each crop's edges, the feature
# path's reach (four 3x3 convolutions), so that the seams between crops do not count. Many
# small crops sample the image better than a few large ones: pcb10's channel gates, sampled
# by 4x4 crops of 200 px, missed the whole image's by up to 0.019; by 11x11 of 72 px, 0.004
# (probe); the tiled index map agreed with the whole one on 99.37% and 99.85% (bench/tiling.py).
SAMPLE_CROP = 72
SAMPLE_MARGIN = 4
# ...and at most this share of the image's pixels: a tile holds as much as half of an image
# that is barely larger than one (a decision image shrunk to 1024 px), where sampling half
# of it cost a third of the fusion's time. A tenth instead of a fifth, on the selection
# stacks of docs/method.md decided at 1024 px: 27.147 / 27.129 dB (stepped), 30.220 / 30.222
# (BSDS500), 35.534 / 35.534 (64 slices, smooth), 8-10% less time; on pcb10 the seam
# measures moved by at most 0.003 (probe).
SAMPLE_SHARE = 0.1


def decision_reach(score_sigma: float) -> int:
    """How far from a pixel one decision step looks, in px.

    Feature path: four 3x3 convolutions (4); gradient energy (1); spatial frequency
    window (``SF_RADIUS``); decision path: a 7x7 spatial SE, then four 3x3 convolutions
    each followed by a 7x7 spatial SE (3 + 4 x 4); score smoothing (3 sigma); guided
    filter (twice its radius; the boundary band's 9x9 blur reaches less).
    """
    features = 4 + 1
    decision_path = 3 + 4 * (1 + 3)
    smoothing = math.ceil(3 * score_sigma) if score_sigma > 0 else 0
    guided = 2 * refinement.GUIDED_RADIUS
    assert len(DecisionPath.WIDTHS) == 5  # four conv blocks, as counted above
    return features + SF_RADIUS + decision_path + smoothing + guided


# One decision step's reach for the shipped weights (score sigma 4) is 47 px; the halo
# covers it. bench/tiling.py --seed 1 (synthetic stacks, never the ones reported):
# halo 32 / 48 / 96 kept 99.6 / 99.8 / 99.9% of the index map.
TILE_HALO = 48
MIN_TILE_CORE = 64  # a tile smaller than this is mostly halo: refuse the plan instead


@dataclass(frozen=True)
class Tile:
    """A tile: its ``core`` (rows y0:y1, columns x0:x1), which it decides, and the ``window``
    it reads (the core grown by the halo, clipped to the image)."""

    core: tuple[int, int, int, int]
    window: tuple[int, int, int, int]

    def window_slices(self) -> tuple[slice, slice]:
        y0, y1, x0, x1 = self.window
        return slice(y0, y1), slice(x0, x1)

    def core_slices(self) -> tuple[slice, slice]:
        y0, y1, x0, x1 = self.core
        return slice(y0, y1), slice(x0, x1)

    def core_in_window(self) -> tuple[slice, slice]:
        (y0, y1, x0, x1), (wy0, _, wx0, _) = self.core, self.window
        return slice(y0 - wy0, y1 - wy0), slice(x0 - wx0, x1 - wx0)


def _spans(length: int, parts: int, halo: int) -> list[tuple[int, int, int, int]]:
    """``parts`` cores of (nearly) equal size along one axis: (start, stop, window start, window stop)."""
    edges = [int(edge) for edge in np.linspace(0, length, parts + 1).round()]
    return [(a, b, max(0, a - halo), min(length, b + halo)) for a, b in zip(edges[:-1], edges[1:], strict=True)]


def tile_grid(height: int, width: int, max_pixels: int, halo: int) -> list[Tile]:
    """Tiles whose windows (halo included) hold at most ``max_pixels``, covering the image.

    Of all grids of rows x columns, the one that reads the fewest pixels in all (the
    halos are work done twice), so a wide image gets wide tiles.
    """
    best: tuple[int, int, list, list] | None = None
    for rows in range(1, max(1, height // MIN_TILE_CORE) + 1):
        row_spans = _spans(height, rows, halo)
        tallest = max(stop - start for _, _, start, stop in row_spans)
        widest = max_pixels // tallest
        if widest < min(width, MIN_TILE_CORE + 2 * halo):
            continue
        columns = next(
            (c for c in range(1, width + 1) if max(e - s for _, _, s, e in _spans(width, c, halo)) <= widest),
            None,
        )
        if columns is None:
            continue
        column_spans = _spans(width, columns, halo)
        area = sum(e - s for _, _, s, e in row_spans) * sum(e - s for _, _, s, e in column_spans)
        if best is None or (area, rows * columns) < (best[0], best[1]):
            best = (area, rows * columns, row_spans, column_spans)
    if best is None:
        raise ValueError(f"no tile of at most {max_pixels} px with a {halo} px halo covers {width}x{height}")
    _, _, row_spans, column_spans = best
    return [
        Tile((y0, y1, x0, x1), (wy0, wy1, wx0, wx1))
        for y0, y1, wy0, wy1 in row_spans
        for x0, x1, wx0, wx1 in column_spans
    ]


def image_tiles(height: int, width: int, tile_pixels: int | None, halo: int) -> list[Tile]:
    """The tiles an image runs in: the whole image as one where it fits ``tile_pixels``
    (None: any size fits), else ``tile_grid``'s."""
    if tile_pixels is None or height * width <= tile_pixels:
        return [Tile((0, height, 0, width), (0, height, 0, width))]
    return tile_grid(height, width, tile_pixels, halo)


@dataclass(frozen=True)
class SampleMosaic:
    """Crops spread evenly over the image, laid side by side: a small image with its statistics."""

    origins: list[tuple[int, int]]  # each crop's top-left corner in the image
    crop: int  # crop side in px
    per_side: int

    def cut(self, image: np.ndarray) -> np.ndarray:
        """The mosaic of ``image``'s crops, ``(S, S)`` or ``(S, S, C)`` with S = per_side x crop."""
        rows = []
        for row in range(self.per_side):
            crops = [
                image[y : y + self.crop, x : x + self.crop]
                for y, x in self.origins[row * self.per_side : (row + 1) * self.per_side]
            ]
            rows.append(np.concatenate(crops, axis=1))
        return np.ascontiguousarray(np.concatenate(rows, axis=0))

    def inside(self) -> np.ndarray:
        """``(S, S)`` bool: pixels at least ``SAMPLE_MARGIN`` from every crop edge."""
        one = np.zeros((self.crop, self.crop), bool)
        margin = min(SAMPLE_MARGIN, self.crop // 4)
        one[margin : self.crop - margin, margin : self.crop - margin] = True
        return np.tile(one, (self.per_side, self.per_side))


def mosaic_side(height: int, width: int, tile_pixels: int) -> int:
    """The sample mosaic's side: what a tile holds, at most ``SAMPLE_SHARE`` of the image."""
    return max(SAMPLE_CROP, min(math.isqrt(tile_pixels), math.isqrt(int(height * width * SAMPLE_SHARE))))


def sample_mosaic(height: int, width: int, side: int) -> SampleMosaic:
    """As many crops of ``SAMPLE_CROP`` px as fit a mosaic of ``side`` px, centred on an even grid."""
    per_side = max(1, side // SAMPLE_CROP)
    crop = min(side // per_side, height, width)
    ys = [round((height - crop) * (k + 0.5) / per_side) for k in range(per_side)]
    xs = [round((width - crop) * (k + 0.5) / per_side) for k in range(per_side)]
    return SampleMosaic([(y, x) for y in ys for x in xs], crop, per_side)


Run = Callable[[StackContext], tuple[np.ndarray, np.ndarray, torch.Tensor | None]]


def measure_statistics(
    mosaic: SampleMosaic,
    make_context: Callable[[StackSource, np.ndarray], StackContext],
    source: StackSource,
    run: Run,
) -> ImageWideStatistics:
    """The image-wide quantities, from a fusion of the sample mosaic.

    Every slice's channel gates are taken over the inside of the crops, and the
    strategy ``run`` fuses the mosaic with those gates and records the sharpness
    medians (over the inside of the crops) that the tiles will use. In float32 both
    come from one fusion, each slice's gates measured as its features are first made;
    under bfloat16 features the gates are measured first, in float32.
    """
    mosaic_source = StackSource(labels=source.labels, paths=source.paths, reader=lambda j: mosaic.cut(source.read(j)))
    context = make_context(mosaic_source, mosaic_source.read(0))
    inside = torch.from_numpy(mosaic.inside()).to(context.device)[None, None]
    context.statistics_mask = inside

    def gates_of(j: int) -> torch.Tensor:
        """Slice ``j``'s channel gates over the inside of the crops, by a pass of their own."""
        gray = context.gray([context.first_slice if j == 0 else mosaic_source.read(j)])
        with context.clock.stage("features"):
            return context.model.features.channel_gates(gray, inside.to(gray.dtype))[0]

    if context.precision == "float32":
        # Each slice's gates in the same pass as its features (``StackContext.activity``).
        context.gates_measured_over = inside
        run(context)
        measured = context.measured_gates  # a strategy that skips some slices leaves theirs to measure
        gates = torch.stack([measured[j] if j in measured else gates_of(j) for j in range(len(source))]).cpu()
    else:
        gates = torch.stack([gates_of(j) for j in range(len(source))]).cpu()
        context.statistics = ImageWideStatistics(gates)
        run(context)
    return ImageWideStatistics(gates, dict(context.measured_medians))


def _window_reader(read_rows: RowReader, kept: list[int], window: tuple[slice, slice]) -> Callable[[int], np.ndarray]:
    """A tile's reader: a copy of the window, cut from only the window's rows of the slice, so that
    no whole slice is held beside the tile's work."""
    rows, columns = window
    return lambda j: read_rows(kept[j], rows)[:, columns].copy()


def _tile_progress(
    progress: Callable[[int, int], None], number: int, count: int, n_slices: int, kept: int
) -> Callable[[int, int], None]:
    """Slices done in tile ``number`` of ``count`` (``kept`` of ``n_slices`` run) -> slice-tiles done of all."""
    return lambda done, total: progress(number * n_slices + round(done * n_slices / kept), count * n_slices)


def take_slice_times(clock: StageClock, start: int, numbers: list[int], totals: list[float]) -> None:
    """Move the per-slice times booked since ``start`` (slices ``numbers``, in order) into ``totals``."""
    for number, seconds in zip(numbers, clock.per_slice[start:], strict=True):
        totals[number] += seconds
    del clock.per_slice[start:]


def _glibc_function(name: str) -> Callable[..., int] | None:
    try:
        return getattr(ctypes.CDLL(None), name)
    except (AttributeError, OSError):  # not glibc
        return None


_MALLOC_TRIM = _glibc_function("malloc_trim")
_MALLOPT = _glibc_function("mallopt")
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters
# While the network runs, blocks up to this size are kept in the heap when freed.
KEPT_BLOCK_BYTES = 2**30
# glibc's own mmap threshold grows up to 32 MiB as blocks are freed; after the network the
# thresholds are set to that ceiling (and twice it for trimming, as glibc pairs them).
USUAL_MMAP_THRESHOLD = 32 * 2**20


@contextmanager
def freed_memory_reused() -> Iterator[None]:
    """While the network runs, glibc keeps freed blocks of every size for the next allocation.

    glibc returns a block over its mmap threshold (at most 32 MiB) to the system when it is
    freed, so every feature-sized tensor (50 to 200 MB per tile) was mapped afresh and each
    of its pages faulted in on first touch: on this CPU that took as long as the element-wise
    arithmetic itself. Kept in the heap, the same sizes come back every slice and are reused
    (the 64-slice 2000x1500 stack: 51 s to 40 s). The heap fragments more, which the tile
    plan's ``WORK_BYTES_PER_PIXEL`` counts for ``calibrated``, the one strategy that runs so
    (measured for it alone); the heap is trimmed after every tile and at the end.
    """
    if _MALLOPT is None:
        yield
        return
    _MALLOPT(M_MMAP_THRESHOLD, KEPT_BLOCK_BYTES)
    _MALLOPT(M_TRIM_THRESHOLD, KEPT_BLOCK_BYTES)
    try:
        yield
    finally:
        _MALLOPT(M_MMAP_THRESHOLD, USUAL_MMAP_THRESHOLD)
        _MALLOPT(M_TRIM_THRESHOLD, 2 * USUAL_MMAP_THRESHOLD)
        return_freed_memory()


def return_freed_memory() -> None:
    """Hand the memory freed by a tile back to the system before the next tile.

    glibc keeps freed blocks below its mmap threshold (up to 32 MiB: a tile's
    narrower tensors) in the heap for reuse, and over a deep stack the heap fragments
    and the resident size creeps up: a 64-slice 2000x1500 stack peaked at 1877 MiB,
    300 MiB above the same scene in 16 slices, nearly all of it free heap. Trimming
    after every slice cost a third of the time (every allocation faults its pages in
    again); after each tile it costs no measurable time (docs/benchmarks.md, Memory).
    """
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


@dataclass
class TiledResult:
    """The fused image, index map (slice numbers of the whole stack) and peak sharpness of all
    tiles, and how many slice-tiles ran the network."""

    fused: np.ndarray | None  # None: not gathered (``keep_fused``)
    index_map: np.ndarray
    peak_sharpness: torch.Tensor | None
    slice_tiles_run: int


def fuse_tiles(
    tiles: list[Tile],
    source: StackSource,
    make_context: Callable[[StackSource, np.ndarray], StackContext],
    run: Run,
    statistics: ImageWideStatistics | None,
    progress: Callable[[int, int], None],
    *,
    clock: StageClock,
    prune: bool,
    slice_times: list[float],
    read_rows: RowReader,
    keep_fused: bool = True,
) -> TiledResult:
    """Run the strategy on every tile; the cores make the fused image, index map and peak sharpness.

    ``source`` reads whole decoded slices (a ``DecodedStack``); each tile reads its
    window of them (from ``read_rows``, the rows of a slice), only the
    candidates (``candidate_slices``) when ``prune``. Without ``keep_fused`` the tiles'
    copied pixels are not gathered (the pyramid composite makes the image from the
    slices and the index map alone).
    ``statistics`` None: the one tile is the whole image and measures its own. Each
    slice's time is added to ``slice_times``; progress counts slice-tiles.
    """
    n_slices = len(source)
    fused: np.ndarray | None = None
    index_map: np.ndarray | None = None
    peak: torch.Tensor | None = None
    run_count = 0
    for number, tile in enumerate(tiles):
        window = tile.window_slices()
        kept = list(range(n_slices))
        if prune:
            with clock.stage("prune"):
                kept = candidate_slices(read_rows(j, window[0])[:, window[1]] for j in range(n_slices))
        run_count += len(kept)
        tile_source = StackSource(
            labels=[source.labels[j] for j in kept], paths=source.paths, reader=_window_reader(read_rows, kept, window)
        )
        context = make_context(tile_source, tile_source.read(0))
        context.statistics = statistics
        context.slice_numbers = kept
        context.progress = _tile_progress(progress, number, len(tiles), n_slices, len(kept))
        started = len(clock.per_slice)
        tile_fused, tile_index, tile_peak = run(context)
        take_slice_times(clock, started, kept, slice_times)
        if index_map is None:
            height, width = max(t.core[1] for t in tiles), max(t.core[3] for t in tiles)  # the cores cover the image
            if keep_fused:
                fused = np.empty((height, width, *tile_fused.shape[2:]), tile_fused.dtype)
            index_map = np.empty((height, width), np.uint8 if n_slices <= 256 else np.uint16)
            if tile_peak is not None:
                peak = torch.empty((1, 1, height, width), dtype=tile_peak.dtype)
        core, inner = tile.core_slices(), tile.core_in_window()
        if fused is not None:
            fused[core] = tile_fused[inner]
        index_map[core] = np.asarray(kept, index_map.dtype)[tile_index[inner]]
        if peak is not None and tile_peak is not None:
            peak[0, 0][core] = tile_peak[0, 0][inner].cpu()
        del tile_fused, tile_index, tile_peak, context
        return_freed_memory()
    assert index_map is not None
    return TiledResult(fused, index_map, peak, run_count)


# Resident memory of a CPU fusion, measured with /usr/bin/time on 512x512 and 1024x1024
# crops of pcb10 (10 slices, --composite select): 0.9 and 2.8 GB at batch size 2, 2.3 GB
# at 1 at 1024: the process itself, and per pixel of a tile the activities of the slices,
# mosaics and decision paths held at once. In tiles the process holds about 150 MiB more
# (decoding threads, allocator arenas; pcb10 crop in 9 tiles: 1125 MiB against 944 planned).
BASE_BYTES = 450 * 2**20
# The plan fills this share of the budget; the rest absorbs what the estimate misses. With the
# heap trimmed after each tile (``return_freed_memory``) and no whole slice held beside the tiles,
# 0.65 keeps the default 2G budget's fusions of pcb10, of 2000x1500 stacks of 16 and 64 slices and
# of plankton5 (5 x 20 Mpx) at 1.19-1.30 GiB (bench/scale.py, docs/benchmarks.md); at 0.75, 16
# slices peaked at 1577 MiB.
PLAN_SHARE = 0.65
# Bytes per pixel of a tile: (fixed, per slice of a feature batch). ``calibrated`` runs with
# freed blocks kept in the heap (``freed_memory_reused``), which fragments it: at (1550, 460),
# its measure before, the 64-slice 2000x1500 stack went in 3 tiles and peaked at 1528 MiB
# (39.5 s); at (2100, 600) in 4 tiles, 1404 MiB (37.9 s); at (2500, 700) in 6 tiles, 1122 MiB
# (42.5 s), with pcb10 at 1104 MiB and plankton5 at 1020 MiB (probe, one run each).
WORK_BYTES_PER_PIXEL = {"calibrated": (2500, 700), "calibrated-paper": (2300, 1000), "serial": (2000, 0)}
# Image-wide arrays held throughout, per pixel: the index map and the peak sharpness (float32),
# besides the fused image (its channels x bytes). The flat-region fill's push-pull pyramid
# comes after the tiles, when their work is freed.
KEPT_BYTES_PER_PIXEL = 2 + 4
FILL_BYTES_PER_PIXEL = 32
DEFAULT_MAX_MEMORY = 2 * 2**30


@dataclass
class MemoryPlan:
    """How a fusion fits its memory budget: whole or in tiles, the decoded slices in RAM or in a file.

    ``composite_pixels``: how many pixels the pyramid composite may blend at once.
    """

    budget: int
    tile_pixels: int | None  # the most a tile's window holds; None: the whole image at once
    tiles: int
    halo: int
    slices_in_memory: bool
    composite_pixels: int
    estimated_peak: int

    def report(self) -> dict:
        return {
            "budget_bytes": self.budget,
            "tiles": self.tiles,
            "tile_pixels": self.tile_pixels,
            "halo": self.halo if self.tile_pixels else 0,
            "decoded_slices": "memory" if self.slices_in_memory else "temporary file",
            "composite_pixels": self.composite_pixels,
            "estimated_peak_bytes": self.estimated_peak,
        }


def work_bytes_per_pixel(strategy: str, batch_size: int) -> int:
    fixed, per_slice = WORK_BYTES_PER_PIXEL.get(strategy, WORK_BYTES_PER_PIXEL["calibrated-paper"])
    return fixed + per_slice * batch_size


def plan_memory(
    height: int,
    width: int,
    channels: int,
    itemsize: int,
    n_slices: int,
    *,
    strategy: str,
    batch_size: int,
    budget: int,
    tileable: bool,
) -> MemoryPlan:
    """The largest tiles the budget allows (the whole image when it fits).

    The plan's estimate is kept under ``PLAN_SHARE`` of ``budget``.
    What stays resident (the process, the index map, the peak sharpness, the fused
    image) is counted first; the decoded slices stay in RAM when they take at most
    half of what is left and leave room for the fill and the smallest tile. The
    tiles, the flat-region fill and the composite then take turns with the rest.
    Raises ValueError, saying what is needed, when not even the smallest tile fits
    (or, for a strategy that cannot be tiled, the whole image).
    """
    pixels = height * width
    usable = int(PLAN_SHARE * budget)
    kept = BASE_BYTES + pixels * (KEPT_BYTES_PER_PIXEL + channels * itemsize)
    slice_bytes = n_slices * pixels * channels * itemsize
    work = work_bytes_per_pixel(strategy, batch_size)
    smallest = (MIN_TILE_CORE + 2 * TILE_HALO) ** 2
    # What must fit beside the decoded slices for them to stay in RAM: else they go to a file.
    least_work = max(pixels * FILL_BYTES_PER_PIXEL, (smallest if tileable else pixels) * work)
    in_memory = slice_bytes <= (usable - kept) / 2 and usable - kept - slice_bytes >= least_work
    if in_memory:
        kept += slice_bytes
    remaining = usable - kept
    composite_pixels = max(0, remaining) // (COMPOSITE_BYTES_PER_CHANNEL_PIXEL * channels)
    if pixels * FILL_BYTES_PER_PIXEL > remaining:
        least = (kept - (slice_bytes if in_memory else 0) + pixels * FILL_BYTES_PER_PIXEL) / PLAN_SHARE
        raise ValueError(f"fusing {width}x{height} slices needs a budget of at least {least / 2**30:.1f} GiB")
    if pixels * work <= remaining:
        return MemoryPlan(budget, None, 1, 0, in_memory, composite_pixels, kept + pixels * work)
    if not tileable or smallest * work > remaining:
        least = (kept - (slice_bytes if in_memory else 0) + (smallest if tileable else pixels) * work) / PLAN_SHARE
        how = "in tiles" if tileable else "whole (this strategy does not run in tiles)"
        raise ValueError(f"fusing {width}x{height} slices {how} needs a budget of at least {least / 2**30:.1f} GiB")
    tile_pixels = remaining // work
    tiles = len(tile_grid(height, width, tile_pixels, TILE_HALO))
    return MemoryPlan(budget, tile_pixels, tiles, TILE_HALO, in_memory, composite_pixels, kept + tile_pixels * work)
