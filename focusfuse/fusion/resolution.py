"""Decisions at reduced resolution: which slice is sharp, decided on smaller slices.

A focus stack's slices are often oversampled: a 20-megapixel microscope frame or a
macro shot resolves far less than a pixel, and which slice is in focus changes over
tens of pixels, not from one pixel to the next. The network's work grows with the
pixels it sees, so a large image is decided on its slices shrunk by area averaging:
by the default to a long side of ``DEFAULT_DECISION_SIDE`` px, at most halved; by
``--speed fast`` to ``FAST_DECISION_SIDE`` px, at most quartered. The index map is
taken back to full size, and the fused image is made from the full-size slices under
it (the pyramid composite, or copying): every output keeps its full resolution, and
every fused pixel still comes from the slices at full resolution. Near every change
of slice, where a decision pixel cannot say on which full-size pixel the change
falls, the full-size index is chosen by ``refine_boundaries``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import cv2
import numpy as np
import torch

from focusfuse.fusion.alignment import FINE_SIDE
from focusfuse.fusion.strategies import SLICES_PER_DECISION, Precision
from focusfuse.io.slice_cache import DecodedStack

Speed = Literal["default", "fast"]
SPEEDS: tuple[str, ...] = ("default", "fast")
# The long side of the image the decisions see, in pixels, and the most the slices are
# shrunk for them (a 20-megapixel frame is decided at a quarter of its side under fast,
# not at a tenth). The sides and caps were chosen on selection stacks that no benchmark
# table reports (docs/method.md): halving 2000x1500 stacks kept or raised their PSNR
# against the truth with the boundary refinement; quartering them cost 0.7-0.8 dB.
DEFAULT_DECISION_SIDE = 1024
DEFAULT_MAX_REDUCTION = 2
FAST_DECISION_SIDE = 512
MAX_REDUCTION = 4


# New slices pre-selected by feature sharpness before each decision path where the decisions
# are made on shrunk slices (at full size: SLICES_PER_DECISION, 4, for either speed).
# ``fast``: on the selection stacks of DEFAULT_DECISION_SIDE's comment, decided at 512 px,
# 4 / 6 / 8 gave 26.71 / 26.91 / 27.32 dB (stepped depth), 29.85 / 29.92 / 30.10 (BSDS500
# mosaic) and 35.20 throughout (smooth depth), with a fifth to two fifths less time in the
# decisions; 6, not 8, keeps the decision path in charge of most steps on real stacks,
# where feature sharpness alone is less sure.
FAST_SLICES_PER_DECISION = 6
# The default, decided at 1024 px: 4 / 5 / 6 gave 26.97 / 27.05 / 27.15 dB (stepped), 30.18
# / 30.15 / 30.22 (BSDS500) and 35.53 on 64 slices of the smooth stack in 55.7 s with 4 and
# 37.8 / 37.0 s with 5 / 6 (after the in-place network; probes). 6 moved pcb10's edge_kept
# (bench/seams.py) 0.115 points below 4's, over the 0.1 the default is allowed to lose; 5
# moved it 0.086 and spurious edges 0.001 points. On 256 px stacks decided at full size
# (bench/multislice.py's generator, seeds 11 and 12) 6 lost up to 0.09 dB at N = 20: there
# a pixel's depth changes over fewer pixels, so full-size decisions keep 4.
DEFAULT_REDUCED_SLICES_PER_DECISION = 5
# ...and in a deep stack more: as many as keep the decision paths to DEEP_STACK_DECISION_PATHS,
# up to DEEP_STACK_MOST_PER_DECISION (from 47 slices on; 7 from 56). Neighbouring slices of a
# deep stack are a small z step apart, so a group of them spans little of its depth. On
# selection stacks of 64 slices of 2000x1500 (seed 11, the kinds above; probes), 5 / 6 / 7 / 8
# gave 25.558 / 25.528 / 25.559 / 25.773 dB (stepped), 27.543 / 27.561 / 27.511 / 27.489
# (BSDS500 mosaic) and 35.534 with 5 and 8 (smooth): 7 stays within 0.04 dB of 5 on each
# with 9 decision paths instead of 13; 8 lost 0.054 on the mosaic.
DEEP_STACK_DECISION_PATHS = 9
DEEP_STACK_MOST_PER_DECISION = 7


def registration_side(speed: Speed) -> int:
    """The long side alignment registers on: no finer than the decisions are made at (fast's
    at 512 px; the default's at up to ``FINE_SIDE``, 1024 px, as the decisions)."""
    return FAST_DECISION_SIDE if speed == "fast" else FINE_SIDE


def warp_interpolation(speed: Speed) -> int:
    """How aligned slices are resampled: Lanczos, or under ``fast`` bicubic, a fifth of the
    time (pcb10: 0.12 against 0.02 s a slice) for decisions made at a quarter of the side."""
    return cv2.INTER_CUBIC if speed == "fast" else cv2.INTER_LANCZOS4


def slices_per_decision_for(speed: Speed, reduced: bool = True, n_slices: int = 0) -> int:
    """The ``calibrated`` strategy's slices per decision path unless one is asked for: on
    shrunk slices ``FAST_SLICES_PER_DECISION`` for ``fast`` and
    ``DEFAULT_REDUCED_SLICES_PER_DECISION`` for the default (more in a stack of ``n_slices``
    deep enough to need over ``DEEP_STACK_DECISION_PATHS`` decision paths), else
    ``SLICES_PER_DECISION`` (so that ``fast`` on a small image is the default)."""
    if not reduced:
        return SLICES_PER_DECISION
    if speed == "fast":
        return FAST_SLICES_PER_DECISION
    deep = min(DEEP_STACK_MOST_PER_DECISION, math.ceil((n_slices - 1) / DEEP_STACK_DECISION_PATHS))
    return max(DEFAULT_REDUCED_SLICES_PER_DECISION, deep)


def network_precision(device: torch.device, reduced: bool) -> Precision:
    """The precision of the network's convolutions, the feature path's and (``calibrated``)
    the decision path's: bfloat16 for decisions on shrunk slices (``reduced``, either speed)
    on a CPU with native bfloat16 convolutions (AVX512-BF16, AMX), where a convolution takes
    half of float32's time (the feature path about 70%, the decision path about 65%, on
    470x470 tiles; probes); float32 everywhere else (images decided at full size, CUDA,
    other CPUs). Both speeds choose alike.

    The comparisons between slices, the refinement and the choice stay in float32. On the
    selection stacks of ``DEFAULT_DECISION_SIDE``'s comment decided at 1024 px (seed 11;
    probe), float32 / bfloat16 features / both paths in bfloat16 gave 27.051 / 27.040 /
    27.039 dB (stepped), 30.152 / 30.148 / 30.169 (BSDS500) and 35.202 throughout (smooth),
    and 35.534 on 64 slices throughout; pcb10's seam measures (bench/seams.py) were spurious
    0.5337% / 0.5337% / 0.5337% and edge_kept 66.933% / 66.946% / 66.946%. Under ``fast``
    (decided at 512 px) bfloat16 features fused a 16-slice selection stack to 35.20 dB as
    float32 did, and pcb10's index maps agreed on 99.4% of pixels.
    """
    if reduced and device.type == "cpu" and torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return "bfloat16"
    return "float32"


def decision_size(height: int, width: int, speed: Speed, strategy: str = "calibrated") -> tuple[int, int]:
    """(height, width) of the image the decisions are made on (``calibrated`` only; the other
    strategies decide at full size): the image shrunk to the speed's decision side on its long
    side, by at most its cap, never enlarged."""
    side, cap = DEFAULT_DECISION_SIDE, DEFAULT_MAX_REDUCTION
    if speed == "fast":
        side, cap = FAST_DECISION_SIDE, MAX_REDUCTION
    if strategy != "calibrated" or max(height, width) <= side:
        return height, width
    scale = max(side / max(height, width), 1.0 / cap)
    return max(1, round(height * scale)), max(1, round(width * scale))


def reduced_stack(
    read: Callable[[int], np.ndarray], n_slices: int, size: tuple[int, int], *, in_memory: bool
) -> DecodedStack:
    """The slices of ``read`` shrunk by area averaging to ``size`` (height, width), each once.

    Kept where the memory plan keeps the full-size slices (``in_memory``: in RAM, else in
    a temporary file): a deep stack of large frames shrunk by half is still a quarter of
    the full-size stack. One worker shrinks ahead of the decisions.
    """
    height, width = size

    def shrink(index: int) -> np.ndarray:
        return cv2.resize(read(index), (width, height), interpolation=cv2.INTER_AREA)

    return DecodedStack(shrink, n_slices, shrink(0), in_memory=in_memory, workers=1)


def enlarge_index_map(index_map: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The index map at ``size`` (height, width), each full-size pixel taking the nearest decision."""
    height, width = size
    return cv2.resize(index_map, (width, height), interpolation=cv2.INTER_NEAREST)


def enlarge_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A boolean map at ``size``, nearest decision."""
    return enlarge_index_map(mask.astype(np.uint8), size).astype(bool)


# Focus measure of the boundary refinement: the Laplacian's energy over a window this wide.
FOCUS_WINDOW = 7
# How far from a change of slice the refinement reaches, in decision pixels. Chosen on
# the selection stacks of DEFAULT_DECISION_SIDE's comment, halved: PSNR rose with the
# reach (stepped depth with fibres 26.53 / 26.70 / 26.82 / 26.90 dB at 1 / 2 / 3 / 4;
# natural images 29.99 / 30.11 / 30.18 / 30.20; full-size decisions 26.63 and 30.03);
# 3, not more, keeps the band where a Laplacian replaces the network's choice narrow.
BOUNDARY_REACH = 3


def focus_measure(image: np.ndarray) -> np.ndarray:
    """``(H, W)`` float32: local energy of the Laplacian of the luminance, over a ``FOCUS_WINDOW`` window."""
    gray = image
    if image.ndim == 3:
        channels = image.shape[2]
        if channels in (3, 4):
            gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY if channels == 3 else cv2.COLOR_RGBA2GRAY)
        else:  # gray+alpha, or a channel stack's first channel
            gray = np.ascontiguousarray(image[:, :, 0])
    laplacian = cv2.Laplacian(gray, cv2.CV_32F, ksize=3)
    cv2.multiply(laplacian, laplacian, dst=laplacian)
    return cv2.boxFilter(laplacian, -1, (FOCUS_WINDOW, FOCUS_WINDOW), normalize=False)


def refine_boundaries(index_map: np.ndarray, read: Callable[[int], np.ndarray], scale: float) -> np.ndarray:
    """Place the full-size boundaries between slices by a full-resolution focus measure.

    ``index_map`` is the enlarged decision (full size); a decision pixel covers about
    ``1 / scale`` full-size pixels, so near a change of slice the decision cannot say
    on which full-size pixel it falls, and a thin structure or a depth edge may be a
    few decision pixels off. There, within ``BOUNDARY_REACH`` decision pixels of the
    boundary, each pixel takes whichever of the slices chosen around it is sharpest at full
    resolution (``focus_measure``); everywhere else the decision stands. Returns a
    new index map.
    """
    reach = max(1, math.ceil(BOUNDARY_REACH / scale))
    kernel = np.ones((2 * reach + 1, 2 * reach + 1), np.uint8)
    band = cv2.dilate(index_map, kernel) != cv2.erode(index_map, kernel)
    if not band.any():
        return index_map
    refined = index_map.copy()
    best = np.full(index_map.shape, -1.0, np.float32)
    for j in np.unique(index_map).tolist():
        near = cv2.dilate((index_map == j).astype(np.uint8), kernel).view(bool) & band
        sharpness = focus_measure(read(j))
        better = near & (sharpness > best)
        np.copyto(best, sharpness, where=better)
        np.copyto(refined, j, where=better)
    return refined
