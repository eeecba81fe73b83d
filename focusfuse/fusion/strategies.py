"""How N slices become one image: serial pair fusion or decision calibration.

- ``serial``: fuse slice 1 with 2, the result with 3, ... (2(N-1) feature
  extractions); fused = p A + (1 - p) B at every step. With N = 2 this is the
  plain GACN pair fusion.
- ``calibrated`` (default): every slice's features are computed once (N
  extractions), as in decision calibration, but each decision path compares new
  slices with the slice currently chosen at each pixel, whose activities are kept
  as a per-pixel mosaic of the cached ones ("running best", gacn.md). New slices
  come four at a time: per pixel the one with the sharpest features goes into the
  decision path, so about (N-1)/4 decision paths run. Where that pick and the current
  choice are adjacent slices (one z step apart) on textured ground, the sharper
  features decide instead of the decision path (see `fuse_running_best`). No
  decision map is ever compared with another, so their saturation does not matter.
  Pixels that no slice shows textured (flat regions) then take their slice from
  the textured pixels around them (`fill_flat_regions`), which reads the stack a
  second time for those pixels only.
- ``calibrated-paper``: Eq. 19 as published. Slice 1 is the baseline; the N-1
  decision paths compare it with every other slice, in batches, and slice j is
  ranked by its odds (1 - p_j) / (p_j + 1e-4). The final maps saturate at 0 or 1,
  so every slice sharper than the baseline ties at odds ~1e4 and the first of
  them wins: whole regions come from the wrong slice (kept for comparison).
In both calibrated forms memory is flat in N and every fused pixel is the pixel
of the chosen slice.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

from focusfuse.fusion.timing import StageClock
from focusfuse.io.color import cast_like, to_gray
from focusfuse.io.reader import StackSource
from focusfuse.model.filters import box_sum, fill_from_known, gradient_energy
from focusfuse.model.network import GACN

Strategy = Literal["calibrated", "calibrated-paper", "serial"]
Precision = Literal["float32", "bfloat16"]
STRATEGIES: tuple[str, ...] = ("calibrated", "calibrated-paper", "serial")
ODDS_EPSILON = 1e-4  # the authors' guard in Eq. 19's denominator
# Slices pre-selected by feature sharpness per decision path in `calibrated`. With
# flat regions filled from their rims, 1, 2 and 3 gave the same seed-0 table of
# bench/multislice.py, and on seeds 0, 1 and 2 4 stayed within 0.01 dB of 3, 5 and 6
# within 0.03 (probe): what the extra decision paths changed lay in the flat regions.
# 4 runs one decision path at N = 5 (3 ran two), which keeps N = 5 below 0.65 of
# serial's time per slice.
SLICES_PER_DECISION = 4
# Feature sharpness (`feature_sharpness`) is summed over a (2r+1)^2 window with this r:
# 3 fused the benchmark stacks best (probe: magnitude over r = 1, 2, 3, 5; energy over
# r = 2, 3, 5, 8, 12).
SHARPNESS_RADIUS = 3
# Slices this many z steps apart or fewer are decided by feature sharpness in
# `calibrated` (probe: 2 and 3 did worse than 1)...
ADJACENT_STEPS = 1
# ...where the pixel is textured: the sharper of the two at least this fraction of the
# median sharpness of the current choice. Below it (flat ground, rims of flat regions)
# the decision path's wider view, which knows the defocus spread, stays in charge
# (probe: 0.2 lost against serial on N = 5 drift, 0.5 and 1 held).
TEXTURED_FRACTION = 0.5
Progress = Callable[[int, int], None]


@dataclass
class ImageWideStatistics:
    """What a decision depends on beyond its neighbourhood, fixed for fusion in tiles.

    Attributes:
        gates: ``(N, 4, 16)`` every slice's channel SE weights (``FeatureExtractor.channel_gates``).
        sharpness_medians: the median feature sharpness of the current choice before each
            decision step of ``calibrated`` (the ``TEXTURED_FRACTION`` reference), keyed by
            the last slice of the step's group; None while they are being measured (the
            context records them).
    """

    gates: torch.Tensor
    sharpness_medians: dict[int, float] | None = None

    def sharpness_median(self, last_slice: int) -> float:
        """The median before the step whose group ends at ``last_slice``, or the first one after it
        (a tile whose slices were pruned groups them differently)."""
        assert self.sharpness_medians is not None
        return self.sharpness_medians[min(k for k in self.sharpness_medians if k >= last_slice)]


@dataclass
class StackContext:
    """Everything a strategy needs; built by the pipeline for the image or for each tile.

    With ``statistics`` the image-wide quantities come from there instead of from the
    pixels at hand; what it lacks is computed here (over ``statistics_mask`` where one
    is given) and the medians are recorded in ``measured_medians``. ``slice_numbers``
    gives each slice of ``source`` its number in the whole stack, where pruning left
    some out (the strategies' index maps count slices of ``source``).
    """

    model: GACN
    source: StackSource
    first_slice: np.ndarray
    device: torch.device
    clock: StageClock
    intensity_offset: float
    intensity_scale: float
    progress: Progress
    statistics: ImageWideStatistics | None = None
    statistics_mask: torch.Tensor | None = None
    measured_medians: dict[int, float] = field(default_factory=dict)
    slice_numbers: list[int] | None = None
    # The network's convolutions, of the feature path and of the decision path
    # (``resolution.network_precision`` says where bfloat16 is used and why).
    precision: Precision = "float32"
    # While the sample mosaic of a tiled fusion is fused (``tiling.measure_statistics``):
    # the pixels the channel gates are measured over, and the gates measured so far, by
    # slice number. Each slice's gates come from the same pass as its first features.
    gates_measured_over: torch.Tensor | None = None
    measured_gates: dict[int, torch.Tensor] = field(default_factory=dict)
    # A slice's activities done with (folded into a mosaic), kept to take the next slice's:
    # writing into memory already in use spares faulting in a new feature-sized tensor.
    spare_activity: torch.Tensor | None = None

    def recycle(self, activity: torch.Tensor) -> None:
        """Keep ``activity``, no longer needed by the caller, for the next extraction of its shape."""
        self.spare_activity = activity

    def _spare_for(self, grays: torch.Tensor) -> torch.Tensor | None:
        spare, self.spare_activity = self.spare_activity, None
        if spare is None or spare.shape[0] != grays.shape[0] or spare.shape[2:] != grays.shape[2:]:
            return None
        return spare

    def number(self, index: int) -> int:
        """Slice ``index`` of ``source``'s number in the whole stack."""
        return index if self.slice_numbers is None else self.slice_numbers[index]

    def activity(self, grays: torch.Tensor, indices: list[int]) -> torch.Tensor:
        """``(K, 64, H, W)`` float32 activities of slices ``indices``, gray ``(K, 1, H, W)``.

        Under ``precision`` bfloat16 the feature path's convolutions run in bfloat16; the
        activities come back as float32, so every comparison stays in float32.
        """
        if self.gates_measured_over is not None and self.precision == "float32":
            return self._activity_measuring_gates(grays, indices)
        gates = None
        if self.statistics is not None:
            gates = self.statistics.gates[[self.number(j) for j in indices]].to(self.device)
        if self.precision == "float32":
            return self.model.activity(grays, gates, out=self._spare_for(grays))
        with torch.autocast(self.device.type, dtype=torch.bfloat16):
            energy = self.model.activity(grays, gates)
        spare = self._spare_for(grays)
        return energy.float() if spare is None else spare.copy_(energy)

    def _activity_measuring_gates(self, grays: torch.Tensor, indices: list[int]) -> torch.Tensor:
        """``activity``, each slice seen for the first time also giving its channel gates over
        ``gates_measured_over`` (``gated_features``): one feature pass where measuring the gates
        first and then fusing took two."""
        assert self.gates_measured_over is not None
        activities = []
        for position, index in enumerate(indices):
            number, gray = self.number(index), grays[position : position + 1]
            known = self.measured_gates.get(number)
            spare = self._spare_for(gray) if len(indices) == 1 else None
            if known is not None:
                activities.append(self.model.activity(gray, known[None], out=spare))
                continue
            gates, features = self.model.features.gated_features(gray, self.gates_measured_over.to(gray.dtype))
            self.measured_gates[number] = gates[0]
            activities.append(gradient_energy(features, out=spare))
        return activities[0] if len(activities) == 1 else torch.cat(activities)

    def sharpness_median(self, sharpness: torch.Tensor, last_slice: int) -> torch.Tensor | float:
        """The median of the current choice's sharpness before the step whose group ends at ``last_slice``."""
        if self.statistics is not None and self.statistics.sharpness_medians is not None:
            return self.statistics.sharpness_median(self.number(last_slice))
        median = sharpness.median() if self.statistics_mask is None else sharpness[self.statistics_mask].median()
        self.measured_medians[self.number(last_slice)] = float(median)
        return median

    def read(self, index: int) -> np.ndarray:
        with self.clock.stage("read"):
            return self.source.read(index)

    def gray(self, images: list[np.ndarray]) -> torch.Tensor:
        """``(K, 1, H, W)`` gray tensor on the device."""
        with self.clock.stage("read"):
            planes = np.stack([to_gray(im, scale=self.intensity_scale, offset=self.intensity_offset) for im in images])
            return torch.from_numpy(planes[:, None]).to(self.device).contiguous(memory_format=torch.channels_last)


def _index_dtype(n_slices: int) -> np.dtype:
    return np.dtype(np.uint8) if n_slices <= 256 else np.dtype(np.uint16)


def fuse_serial(context: StackContext) -> tuple[np.ndarray, np.ndarray]:
    """One-by-one serial fusion; returns (fused in the source dtype, index map)."""
    model, clock, source = context.model, context.clock, context.source
    started = clock.now()
    first = context.first_slice
    fused: np.ndarray = first.astype(np.float32)
    fused_gray = context.gray([first])
    index_map = np.zeros(first.shape[:2], _index_dtype(len(source)))
    clock.per_slice.append(clock.now() - started)
    context.progress(1, len(source))
    for j in range(1, len(source)):
        started = clock.now()
        image = context.read(j)
        gray = context.gray([image])
        with clock.stage("features"):
            # Tiles are fused serially only for pairs (j = 1), where the fused image is slice 0.
            energies = context.activity(torch.cat((fused_gray, gray), 0), [0, j])
        with clock.stage("decisions"):
            final_map = model.decide(energies[0:1], energies[1:2], fused_gray, gray).final_map
        with clock.stage("assemble"):
            weight = final_map[0, 0].cpu().numpy()
            index_map[weight < 0.5] = j
            if fused.ndim == 3:
                weight = weight[:, :, None]
            fused = weight * fused + (1.0 - weight) * image.astype(np.float32)
        if j < len(source) - 1:
            fused_gray = context.gray([fused])
        clock.per_slice.append(clock.now() - started)
        context.progress(j + 1, len(source))
    return cast_like(fused, first.dtype), index_map


def _start_calibrated(context: StackContext) -> tuple[torch.Tensor, torch.Tensor, np.ndarray, np.ndarray]:
    """The first slice's gray and activities, and the fused image and index map it starts."""
    clock, first = context.clock, context.first_slice
    started = clock.now()
    gray = context.gray([first])
    with clock.stage("features"):
        activity = context.activity(gray, [0])
    index_map = np.zeros(first.shape[:2], _index_dtype(len(context.source)))
    clock.per_slice.append(clock.now() - started)
    context.progress(1, len(context.source))
    return gray, activity, first.copy(), index_map


def _slice_batches(
    context: StackContext, batch_size: int
) -> Iterator[tuple[list[int], list[np.ndarray], torch.Tensor, torch.Tensor]]:
    """Slices 1..N-1 in batches: (indices, images, grays, activities), one feature extraction each.

    Books each batch's time (shared evenly by its slices) and reports progress once
    the caller has consumed the batch.
    """
    clock, total = context.clock, len(context.source)
    for start in range(1, total, batch_size):
        started = clock.now()
        indices = list(range(start, min(start + batch_size, total)))
        images = [context.read(j) for j in indices]
        grays = context.gray(images)
        with clock.stage("features"):
            activities = context.activity(grays, indices)
        yield indices, images, grays, activities
        del images, grays, activities  # free before the next extraction, not after it
        share = (clock.now() - started) / len(indices)
        clock.per_slice.extend([share] * len(indices))
        context.progress(indices[-1] + 1, total)


@dataclass
class GroupPick:
    """The sharpest member of a group of consecutive slices, per pixel.

    ``indices`` and ``images`` list the members; ``member`` ``(1, 1, H, W)`` says which
    of them each pixel took; ``gray`` and ``activity`` are the mosaics it picks.
    """

    indices: list[int]
    images: list[np.ndarray]
    member: torch.Tensor
    sharpness_map: torch.Tensor | None  # the picked feature sharpness; computed when first needed
    gray: torch.Tensor
    activity: torch.Tensor

    def sharpness(self) -> torch.Tensor:
        """``(1, 1, H, W)`` feature sharpness of the pick."""
        if self.sharpness_map is None:
            self.sharpness_map = feature_sharpness(self.activity)
        return self.sharpness_map

    def slice_index(self) -> torch.Tensor:
        """``(1, 1, H, W)`` slice number of the pick (long)."""
        return torch.tensor(self.indices, device=self.member.device)[self.member]

    def add(self, index: int, image: np.ndarray, gray: torch.Tensor, activity: torch.Tensor) -> None:
        """Fold in the next slice where its features are sharper.

        A running maximum with one where() per slice is several times faster than
        argmax() and gather() on channels-last CPU tensors, and only the mosaic is
        kept, never the members' activities side by side; it is updated in place (the
        first member's activities become the mosaic). Ties keep the earlier slice.
        """
        current = self.sharpness()
        sharpness = feature_sharpness(activity)
        picked = sharpness > current
        self.sharpness_map = torch.where(picked, sharpness, current)
        self.member = self.member.masked_fill(picked, len(self.indices))
        self.gray = torch.where(picked, gray, self.gray)
        torch.where(picked, activity, self.activity, out=self.activity)  # in place: no new 64-channel map
        self.indices.append(index)
        self.images.append(image)


def feature_sharpness(activity: torch.Tensor) -> torch.Tensor:
    """``(1, 64, H, W)`` gradient energies -> ``(1, 1, H, W)`` windowed feature gradient magnitude.

    The length of the 64-channel feature gradient, summed over a 7x7 window. The
    magnitude, unlike the summed energy (the decision path's spatial frequency),
    does not let a few strong edges in the window outweigh many weaker ones, and
    the smaller window follows a sloping depth surface more closely; both fused the
    benchmark stacks better (probe).
    """
    return box_sum(torch.sqrt(activity.sum(1, keepdim=True)), SHARPNESS_RADIUS)


def _start_group(index: int, image: np.ndarray, gray: torch.Tensor, activity: torch.Tensor) -> GroupPick:
    return GroupPick([index], [image], torch.zeros_like(gray, dtype=torch.long), None, gray, activity)


def _groups(context: StackContext, batch_size: int, group_size: int) -> Iterator[GroupPick]:
    """Slices 1..N-1 in runs of ``group_size`` (the last may be shorter), each folded into its pick.

    Groups do not depend on the feature batch size, so neither does the result.
    """
    group: GroupPick | None = None
    last = len(context.source) - 1
    for indices, images, grays, activities in _slice_batches(context, batch_size):
        for offset, j in enumerate(indices):
            gray, activity = grays[offset : offset + 1], activities[offset : offset + 1]
            with context.clock.stage("decisions"):
                if group is None:
                    group = _start_group(j, images[offset], gray, activity)
                else:
                    group.add(j, images[offset], gray, activity)
                    if len(indices) == 1:  # the batch is this slice alone: its activities are done with
                        context.recycle(activities)
            if len(group.indices) == group_size or j == last:
                yield group
                group = None
        del grays, activities, gray, activity  # as in `_slice_batches`


def fuse_running_best(
    context: StackContext,
    batch_size: int,
    group_size: int = SLICES_PER_DECISION,
    adjacent_by_sharpness: bool = True,
    fill_flat: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Calibrated fusion by running best (`running_best_choice`), flat regions filled after it."""
    fused, index_map, peak_sharpness = running_best_choice(context, batch_size, group_size, adjacent_by_sharpness)
    if fill_flat:
        fill_flat_regions(context, fused, index_map, peak_sharpness)
    return fused, index_map


def running_best_choice(
    context: StackContext,
    batch_size: int,
    group_size: int = SLICES_PER_DECISION,
    adjacent_by_sharpness: bool = True,
) -> tuple[np.ndarray, np.ndarray, torch.Tensor]:
    """Calibrated fusion by running best: each group of slices is compared with the current choice.

    Features are extracted once per slice (``batch_size`` slices at a time). Within a
    group of ``group_size`` consecutive slices the one with the sharpest features is
    taken per pixel (``GroupPick.add``); one decision path then compares that mosaic
    with the sharpest slice found so far, whose activities and gray are kept per
    pixel. ``group_size`` 1 runs a decision path per slice.

    Where the group's pick and the current choice are adjacent slices, their blur
    differs by a single z step: a near-tie, unlike the clearly different pairs the
    decision path was trained on, and there its misses lean to one side (README,
    N-slice strategies). With ``adjacent_by_sharpness`` the sharper features decide
    those pixels when they are textured (``TEXTURED_FRACTION``); the decision path
    decides the rest.

    Returns the fused image and index map before flat regions are filled, and the
    ``(1, 1, H, W)`` peak feature sharpness that filling them needs.
    """
    model, clock = context.model, context.clock
    best_gray, best_activity, fused, index_map = _start_calibrated(context)
    last = len(context.source) - 1
    numbers = torch.tensor([context.number(j) for j in range(last + 1)], device=context.device)
    with clock.stage("decisions"):
        best_sharpness = feature_sharpness(best_activity)
        best_number = torch.full_like(best_sharpness, context.number(0), dtype=torch.long)  # in the whole stack
        peak_sharpness = best_sharpness  # the sharpest any slice is, per pixel
    dtype = getattr(torch, context.precision)  # the decision path's
    for group in _groups(context, batch_size, group_size):
        with clock.stage("decisions"):
            final_map = model.decide(best_activity, group.activity, best_gray, group.gray, dtype).final_map
            sharper = final_map < 0.5  # (1, 1, H, W): the group's pick beats the current choice
            group_sharpness, group_number = group.sharpness(), numbers[group.slice_index()]
            peak_sharpness = torch.maximum(peak_sharpness, group_sharpness)
            if adjacent_by_sharpness:
                reference = context.sharpness_median(best_sharpness, group.indices[-1])
                textured = torch.maximum(group_sharpness, best_sharpness) >= TEXTURED_FRACTION * reference
                adjacent = ((group_number - best_number).abs() <= ADJACENT_STEPS) & textured
                sharper = torch.where(adjacent, group_sharpness > best_sharpness, sharper)
        with clock.stage("assemble"):
            if group.indices[-1] < last:  # the last group's choice feeds no later comparison
                torch.where(sharper, group.activity, best_activity, out=best_activity)
                best_gray = torch.where(sharper, group.gray, best_gray)
                best_sharpness = torch.where(sharper, group_sharpness, best_sharpness)
                best_number = torch.where(sharper, group_number, best_number)
            taken = sharper[0, 0].cpu().numpy()
            picked = group.member[0, 0].cpu().numpy()
            for number, j in enumerate(group.indices):
                chosen = taken & (picked == number)
                index_map[chosen] = j
                fused[chosen] = group.images[number][chosen]
        if group.indices[-1] < last:
            context.recycle(group.activity)  # the mosaic is done with: the next slice's activities go there
        del group  # its mosaic would otherwise live through the next group's extractions
    return fused, index_map, peak_sharpness


def textured_pixels(peak_sharpness: torch.Tensor) -> torch.Tensor:
    """Pixels some slice shows textured: the sharpest slice reaches ``TEXTURED_FRACTION`` of the image's median."""
    return peak_sharpness >= TEXTURED_FRACTION * peak_sharpness.median()


def fill_flat_regions(
    context: StackContext, fused: np.ndarray | None, index_map: np.ndarray, peak_sharpness: torch.Tensor
) -> None:
    """Give pixels that no slice shows textured the slice of the textured pixels around them.

    Inside a flat region every comparison is a coin toss on noise, and each group's
    decision path is another toss, so over many groups the choice drifts to late
    slices, whose wide blur carries the surroundings into the region (README, N-slice
    strategies). The depth of a flat region is best read from its rim: the index map
    is filled in from the textured pixels (``fill_from_known``), rounded, and the
    changed pixels are fetched from their slices in a second read of the stack.
    "Textured" is the sharpest slice reaching ``TEXTURED_FRACTION`` of the median.
    The time is shared evenly among the slices' times. Updates both arrays in place;
    ``fused`` None: the index map only (a composite makes the image from it afterwards).
    """
    clock = context.clock
    started = clock.now()
    with clock.stage("fill"):
        known = textured_pixels(peak_sharpness)
        if bool(known.all()) or not bool(known.any()):
            return
        current = torch.from_numpy(index_map.astype(np.float32)).to(context.device)[None, None]
        filled = fill_from_known(current, known).round_().clamp_(0, len(context.source) - 1)
        refilled = filled[0, 0].cpu().numpy().astype(index_map.dtype)
        changed = refilled != index_map
        index_map[changed] = refilled[changed]
    if fused is not None:
        for j in np.unique(refilled[changed]).tolist():
            image = context.read(j)
            with clock.stage("fill"):
                take = changed & (refilled == j)
                fused[take] = image[take]
    share = (clock.now() - started) / len(clock.per_slice)
    clock.per_slice[:] = [seconds + share for seconds in clock.per_slice]


def fuse_calibrated_paper(context: StackContext, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Decision calibration as published (Eq. 19) with a streaming argmax over the odds."""
    model, clock = context.model, context.clock
    baseline_gray, baseline_activity, fused, index_map = _start_calibrated(context)
    best_odds = torch.ones(fused.shape[:2], device=context.device)
    for indices, images, grays, activities in _slice_batches(context, batch_size):
        with clock.stage("decisions"):
            final_maps = model.decide(baseline_activity, activities, baseline_gray, grays).final_map[:, 0]
            odds = (1.0 - final_maps) / (final_maps + ODDS_EPSILON)
        with clock.stage("assemble"):
            for offset, j in enumerate(indices):
                better = odds[offset] > best_odds
                best_odds = torch.where(better, odds[offset], best_odds)
                chosen = better.cpu().numpy()
                index_map[chosen] = j
                fused[chosen] = images[offset][chosen]
    return fused, index_map
