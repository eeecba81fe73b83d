"""The GACN network: siamese feature path, spatial-frequency comparison, decision path.

The feature path and the decision path are separate modules so that a z-stack can
compute every slice's features once and run only decision paths per comparison
(decision calibration). Shapes follow gacn.md exactly; ``GACN.parameter_count``
is pinned by a test.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from focusfuse.model.filters import box_sum, box_sum_, gaussian_blur, gradient_energy
from focusfuse.model.refinement import refine_decision_map

FEATURE_WIDTH = 16
FEATURE_CHANNELS = 4 * FEATURE_WIDTH  # cat(f0, f1, f2, f3)
SF_RADIUS = 5
SHARPNESS = 1000.0  # k in sigmoid(k x): makes the maps nearly binary


def conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    """Conv 3x3 (padding 1, bias) -> ReLU -> BatchNorm, BN after the ReLU as in GACN."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=True),
        nn.ReLU(inplace=True),
        nn.BatchNorm2d(out_channels),
    )


def batch_norm_affine(norm: nn.BatchNorm2d, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Inference BatchNorm as a scale and a shift per channel: BN(x) = x * scale + shift."""
    assert norm.running_mean is not None and norm.running_var is not None
    scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
    return scale.to(dtype), (norm.bias - norm.running_mean * scale).to(dtype)


def rectified_conv(block: nn.Module, block_input: torch.Tensor) -> tuple[torch.Tensor, nn.BatchNorm2d]:
    """A ``conv_block``'s convolution and ReLU (in place); its BatchNorm is left to the caller.

    Without autograd the callers fold the BatchNorm into what follows it (a gate, a
    spatial SE) and apply both in place: every new tensor the size of a feature map
    costs its page faults on this CPU, more than the arithmetic on it.
    """
    convolution, _, norm = cast(nn.Sequential, block)
    return convolution(block_input).relu_(), cast(nn.BatchNorm2d, norm)


def gated_affine(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``out = x * scale + shift`` per channel (``scale``, ``shift``: ``(N, C, 1, 1)``).

    In float32 one multiply-add. In bfloat16 the CPU has no fast kernel for element-wise
    arithmetic with per-channel operands (3.8 ms against 0.2 ms as a 1x1 depthwise
    convolution, plus 0.5 ms to copy, on 16 x 470x470 channels-last; probe), so each image
    goes through that convolution instead: the same products, each rounded once.
    """
    if x.dtype == torch.float32 or x.device.type != "cpu":
        return torch.addcmul(shift, x, scale, out=out)
    channels = x.shape[1]
    for item in range(x.shape[0]):
        weight, bias = scale[item].reshape(channels, 1, 1, 1), shift[item].reshape(channels)
        out[item : item + 1].copy_(F.conv2d(x[item : item + 1], weight, bias, groups=channels))
    return out


class ChannelSE(nn.Module):
    """Channel squeeze-excitation: rescale channels by a gate from their global means."""

    def __init__(self, channels: int, reduction: int = 8) -> None:
        super().__init__()
        self.gate = nn.Sequential(
            nn.Linear(channels, channels // reduction, bias=False),
            nn.ReLU(inplace=True),
            nn.Linear(channels // reduction, channels, bias=False),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        """Gate ``x`` ``(N, C, H, W)``; ``weights`` ``(N, C)`` fixed from elsewhere replace its own."""
        if weights is None:
            weights = self.gate(x.mean(dim=(2, 3)))
        return x * weights[:, :, None, None]


class SpatialSE(nn.Module):
    """Spatial squeeze-excitation: one 7x7 conv to a per-pixel gate shared by all channels."""

    def __init__(self, channels: int, kernel_size: int = 7) -> None:
        super().__init__()
        self.squeeze = nn.Conv2d(channels, 1, kernel_size, padding=kernel_size // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` times its gate; without autograd ``x`` is multiplied in place."""
        # The C -> 1 conv computed as a depthwise conv plus a channel sum: the same
        # arithmetic, but CPU conv kernels handle a single output channel poorly.
        # bench/speed.py times the whole network.
        weight = self.squeeze.weight
        channels, size = weight.shape[1], weight.shape[-1]
        depthwise = weight.reshape(channels, 1, size, size)
        if torch.is_grad_enabled():
            per_channel = F.conv2d(x, depthwise, padding=size // 2, groups=channels)
            return x * torch.sigmoid(per_channel.sum(1, keepdim=True))
        return x.mul_(self.gate_in_inference(x, depthwise))

    @staticmethod
    def gate_in_inference(x: torch.Tensor, depthwise: torch.Tensor, channels_at_once: int = 16) -> torch.Tensor:
        """The ``(N, 1, H, W)`` gate, a few channels' convolutions at a time (small temporaries)."""
        size = depthwise.shape[-1]
        total: torch.Tensor | None = None
        for start in range(0, x.shape[1], channels_at_once):
            part = depthwise[start : start + channels_at_once]
            summed = F.conv2d(x[:, start : start + channels_at_once], part, padding=size // 2, groups=part.shape[0])
            summed = summed.sum(1, keepdim=True)
            total = summed if total is None else total.add_(summed)
        assert total is not None
        return total.sigmoid_()


class FeatureExtractor(nn.Module):
    """Siamese feature path: four densely connected conv blocks of 16, each with channel SE."""

    def __init__(self) -> None:
        super().__init__()
        width = FEATURE_WIDTH
        self.blocks = nn.ModuleList(
            [conv_block(1, width), conv_block(width, width), conv_block(2 * width, width), conv_block(3 * width, width)]
        )
        self.excitations = nn.ModuleList([ChannelSE(width) for _ in range(4)])

    def forward(self, gray: torch.Tensor, gates: torch.Tensor | None = None) -> torch.Tensor:
        """``(N, 1, H, W)`` gray in [0, 1] -> ``(N, 64, H, W)`` features.

        ``gates`` ``(N, 4, 16)``: the four channel SEs' weights, fixed (``channel_gates``
        of the whole image, when the image goes through in tiles); None computes them
        from ``gray`` itself.
        """
        return self.gated_features(gray, gates=gates)[1]

    def channel_gates(self, gray: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        """``(N, 1, H, W)`` -> ``(N, 4, 16)``: the channel SE weights ``forward`` computes for ``gray``.

        The SEs gate by image-wide channel means, the one thing in the feature path that
        a tile cannot see; computed once on a sample of the image, they fix every tile's.
        ``weight`` ``(1, 1, H, W)`` (1 where a pixel counts) restricts the means to part
        of ``gray``, such as the inside of sample crops laid side by side.
        """
        return self.gated_features(gray, weight)[0]

    def gated_features(
        self, gray: torch.Tensor, weight: torch.Tensor | None = None, gates: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``channel_gates(gray, weight)`` and ``forward(gray, those gates)``, from one pass: the
        gated features are what each block's gate multiplies anyway. ``gates`` given: those
        are used (and returned) instead.

        Without autograd each block's BatchNorm and gate are one multiply-add in place on its
        activations (``rectified_conv``); the gate comes from the BatchNorm's output means,
        which are the activations' means through the same affine map.
        """
        inference = not torch.is_grad_enabled()
        used = []
        features: list[torch.Tensor] = []
        # Without autograd every block writes its gated features into its channels of one
        # tensor, and the next block reads the channels before it from there: the features
        # are never concatenated (a copy of each block's input and of the whole output).
        written: torch.Tensor | None = None
        for number, (block, excitation) in enumerate(zip(self.blocks, self.excitations, strict=True)):
            if number == 0:
                block_input = gray
            elif written is not None:
                block_input = written[:, : number * FEATURE_WIDTH]
            else:
                block_input = torch.cat(features, 1)
            if inference:
                activations, norm = rectified_conv(block, block_input)
                scale, shift = batch_norm_affine(norm, activations.dtype)
                if written is None:  # in the convolutions' dtype (bfloat16 under autocast)
                    size = (activations.shape[0], FEATURE_CHANNELS, *activations.shape[2:])
                    written = torch.empty(
                        size, dtype=activations.dtype, device=activations.device, memory_format=torch.channels_last
                    )
            else:
                activations = block(block_input)
            if gates is not None:
                gate = gates[:, number]
            else:
                if weight is None:
                    means = activations.mean(dim=(2, 3))
                else:
                    means = (activations * weight).sum(dim=(2, 3)) / weight.sum()
                if inference:
                    means = means * scale + shift
                gate = excitation.gate(means)  # type: ignore[operator]
            used.append(gate)
            if written is not None:
                factor = gate.to(activations.dtype)[:, :, None, None]
                channels = written[:, number * FEATURE_WIDTH : (number + 1) * FEATURE_WIDTH]
                gated_affine(activations, scale[:, None, None] * factor, shift[:, None, None] * factor, out=channels)
                del activations
            else:
                features.append(activations * gate[:, :, None, None])
        return torch.stack(used, 1), written if written is not None else torch.cat(features, 1)


class DecisionPath(nn.Module):
    """Spatial SE on the comparison map, then conv blocks 64->48->32->16->1 with spatial SE."""

    WIDTHS = (FEATURE_CHANNELS, 48, 32, 16, 1)

    def __init__(self) -> None:
        super().__init__()
        self.input_excitation = SpatialSE(FEATURE_CHANNELS)
        self.blocks = nn.ModuleList([conv_block(a, b) for a, b in zip(self.WIDTHS[:-1], self.WIDTHS[1:], strict=True)])
        self.excitations = nn.ModuleList([SpatialSE(width) for width in self.WIDTHS[1:]])

    def forward(self, comparison: torch.Tensor) -> torch.Tensor:
        """``(N, 64, H, W)`` comparison map -> ``(N, 1, H, W)`` pre-sigmoid score z.

        ``comparison`` is left as it is (``score_in_place`` overwrites it, which saves a copy
        the size of the map).
        """
        if torch.is_grad_enabled():
            x = self.input_excitation(comparison)
            for block, excitation in zip(self.blocks, self.excitations, strict=True):
                x = excitation(block(x))
            return x
        return self.score_in_place(comparison.clone())

    def score_in_place(self, comparison: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``forward`` without autograd, overwriting ``comparison``.

        Called directly (not through ``__call__``, whose argument tuple holds the map to the
        end) on a map no one else holds, it frees the map once the first block has read it:
        the next blocks then run beside the first block's output alone.

        ``dtype`` bfloat16: the path runs in bfloat16 (autocast; the map is converted first
        and the float32 one freed), the score comes back as float32.
        """
        if dtype == comparison.dtype:
            return self._score(comparison)
        comparison = comparison.to(dtype, memory_format=torch.channels_last)
        with torch.autocast(comparison.device.type, dtype=dtype):
            return self._score(comparison).float()

    def _score(self, comparison: torch.Tensor) -> torch.Tensor:
        x = self.input_excitation(comparison)
        del comparison
        for block, excitation in zip(self.blocks, self.excitations, strict=True):
            activations, norm = rectified_conv(block, x)
            del x
            scale, shift = batch_norm_affine(norm, activations.dtype)
            batch = activations.shape[0]
            scale, shift = (v[None, :, None, None].expand(batch, -1, 1, 1) for v in (scale, shift))
            x = excitation(gated_affine(activations, scale, shift, out=activations))
        return x


def compare_activity(energy_a: torch.Tensor, energy_b: torch.Tensor) -> torch.Tensor:
    """Nearly binary per-channel map: 1 where A's features have the higher spatial frequency.

    Spatial frequency is a box sum of gradient energy, and the box sum is linear, so
    SF_A - SF_B = box_sum(E_A - E_B): one window sum per comparison instead of two.

    Args:
        energy_a, energy_b: ``(N, 64, H, W)`` gradient energies (``gradient_energy``);
            a batch of 1 broadcasts.
    """
    if torch.is_grad_enabled():
        return torch.sigmoid(SHARPNESS * box_sum(energy_a - energy_b, SF_RADIUS))
    # One new tensor, every step after the difference in place (see ``rectified_conv``).
    return box_sum_(energy_a - energy_b, SF_RADIUS).mul_(SHARPNESS).sigmoid_()


@dataclass
class PairDecision:
    """What the decision path says about a pair (A, B); all ``(N, 1, H, W)``.

    Attributes:
        score: pre-sigmoid output z (log-odds-like, positive where A is sharper),
            after the score smoothing when the model has one.
        initial_map: p0 = sigmoid(1000 z).
        final_map: p after the boundary band and guided filter.
    """

    score: torch.Tensor
    initial_map: torch.Tensor
    final_map: torch.Tensor


class GACN(nn.Module):
    """The whole network; ``forward(a, b)`` is the two-source fusion used in training."""

    def __init__(self, score_sigma: float = 0.0) -> None:
        """``score_sigma`` > 0 smooths the score z with a Gaussian before the sigmoid.

        The decision path sees about 13 px around a pixel; inside a wider flat region
        z is noise around 0 and sigmoid(1000 z) turns it into islands. Pooling z over a
        Gaussian lets textured neighbours decide there. It is part of the architecture
        the weights were trained with, so it travels in their metadata (``weights.py``).
        """
        super().__init__()
        self.features = FeatureExtractor()
        self.decision = DecisionPath()
        self.score_sigma = float(score_sigma)

    @property
    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def activity(
        self, gray: torch.Tensor, gates: torch.Tensor | None = None, out: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Gradient energy of the features: all a slice contributes to any comparison.

        ``(N, 1, H, W)`` gray -> ``(N, 64, H, W)``; cached for the baseline of a stack.
        ``gates`` as in ``FeatureExtractor.forward``; ``out`` as in ``gradient_energy``.
        """
        return gradient_energy(self.features(gray, gates), out=out)

    def smooth_score(self, score: torch.Tensor) -> torch.Tensor:
        """Gaussian pooling of z (identity when ``score_sigma`` is 0, the paper's network)."""
        if self.score_sigma <= 0:
            return score
        return gaussian_blur(score, self.score_sigma, math.ceil(3 * self.score_sigma))

    def decide(
        self,
        activity_a: torch.Tensor,
        activity_b: torch.Tensor,
        gray_a: torch.Tensor,
        gray_b: torch.Tensor,
        dtype: torch.dtype = torch.float32,
    ) -> PairDecision:
        """Run the decision path and refinement for precomputed activities.

        ``activity_a`` may have batch 1 and be broadcast against a batch of B's. ``dtype``:
        without autograd, the decision path's precision (``DecisionPath.score_in_place``);
        the comparison before it and the refinement after it stay in float32.
        """
        if torch.is_grad_enabled():
            score = self.decision(compare_activity(activity_a, activity_b))
        else:  # nothing here holds the comparison map: the decision path frees it early
            score = self.decision.score_in_place(compare_activity(activity_a, activity_b), dtype)
        score = self.smooth_score(score)
        initial_map = torch.sigmoid(SHARPNESS * score)
        final_map = refine_decision_map(initial_map, gray_a, gray_b)
        return PairDecision(score=score, initial_map=initial_map, final_map=final_map)

    def forward(self, gray_a: torch.Tensor, gray_b: torch.Tensor) -> tuple[PairDecision, torch.Tensor]:
        """Fuse two gray sources ``(N, 1, H, W)``: returns the decision and F = p A + (1 - p) B."""
        activities = self.activity(torch.cat((gray_a, gray_b), 0))
        activity_a, activity_b = activities.chunk(2, 0)
        decision = self.decide(activity_a, activity_b, gray_a, gray_b)
        fused = decision.final_map * gray_a + (1.0 - decision.final_map) * gray_b
        return decision, fused
