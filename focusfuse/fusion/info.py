"""``focusfuse info``: what ``stack`` would read and do, without fusing.

The slices and their order, size, dtype and the bit depth the pixels use, the TIFF
axes and channels, the physical sizes and where they were found, the memory plan
(tiles, where the decoded slices live, estimated peak) and, when asked, the
alignment transforms. Every slice is decoded once (for the bit depth, and for the
alignment); nothing is written.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from focusfuse.errors import FocusFuseError
from focusfuse.fusion.alignment import ALIGN_MODES, estimate_alignment
from focusfuse.fusion.channels import check_reference_channel, reference_record, slice_texture
from focusfuse.fusion.pipeline import DEFAULT_BATCH_SIZE, memory_budget, open_fusion_source, stack_memory_plan
from focusfuse.fusion.resolution import decision_size
from focusfuse.io.microscope import SeriesSelection


def describe_stack(
    inputs: Sequence[str | os.PathLike],
    *,
    max_memory: int | None = None,
    align: str = "auto",
    z_step: float | None = None,
    strategy: str = "calibrated",
    channel_folders: bool = False,
    reference_channel: int | None = None,
    scene: int | str | None = None,
    position: int | str | None = None,
    time: int | None = None,
) -> dict:
    """The facts ``focusfuse info`` prints, as a JSON-ready dict."""
    if align not in ALIGN_MODES:
        raise FocusFuseError(f"--align {align}: use one of {', '.join(ALIGN_MODES)}")
    source = open_fusion_source(inputs, SeriesSelection(scene, position, time), channel_folders)
    first = source.read(0)
    channels = 1 if first.ndim == 2 else first.shape[2]
    by_channel = source.channel_axis or reference_channel is not None
    check_reference_channel(reference_channel, channels, source.labels[0])
    low, high = float(first.min()), float(first.max())
    texture = slice_texture(first) if by_channel else None
    for index in range(1, len(source)):  # every slice decoded once, for its range and texture
        image = source.read(index)
        low, high = min(low, float(image.min())), max(high, float(image.max()))
        if texture is not None:
            texture = np.maximum(texture, slice_texture(image))
    height, width = first.shape[:2]
    used_strategy = "pair" if len(source) == 2 else strategy
    budget = memory_budget(max_memory)
    decided_at = decision_size(height, width, "default", used_strategy)
    itemsize = first.dtype.itemsize
    plan = stack_memory_plan(
        source, height, width, channels, itemsize, used_strategy, DEFAULT_BATCH_SIZE, budget, decided_at=decided_at
    )
    physical = source.physical.with_z_step(z_step, "--z-step")
    channel_fusion = None
    if texture is not None:
        channel_fusion = reference_record(texture, reference_channel)
    facts = {
        "stack": source.labels[0] if len(source.paths) == 1 else str(source.paths[0].parent),
        "n_slices": len(source),
        "slices": list(source.labels),
        "width": width,
        "height": height,
        "channels": channels,
        "dtype": str(first.dtype),
        "bits_used": int(high).bit_length() if first.dtype.kind == "u" else None,
        "value_range": [low, high],
        "axes": source.axes if len(source.paths) == 1 or source.channel_axis else ("YX" if first.ndim == 2 else "YXS"),
        "physical": physical.report(),
        "source_format": source.source_format,
        "file_holds": list(source.contents),
        "channel_names": list(source.channel_names),
        "channel_fusion": channel_fusion,
        "strategy": used_strategy,
        "decision_size": list(decided_at),
        "memory_plan": plan.report(),
        "alignment": None,
    }
    if align != "none":
        facts["alignment"] = estimate_alignment(source.read, len(source), align).report()
    return facts


def _size(number_of_bytes: int) -> str:
    return f"{number_of_bytes / 2**30:.2f} GiB" if number_of_bytes >= 2**30 else f"{number_of_bytes / 2**20:.0f} MiB"


def _channels_line(facts: dict) -> str:
    fusion = facts["channel_fusion"]
    if fusion is None:
        return "gray" if facts["channels"] == 1 else "colour: decided on the luminance"
    scores = ", ".join(f"{score:.3g}" for score in fusion["texture"])
    return f"fused by channel {fusion['reference']}'s index map ({fusion['chosen_by']}; texture {scores})"


def _format_lines(facts: dict) -> list[tuple[str, str]]:
    """A microscope file's format, what it holds and the channels' names."""
    lines = []
    if facts.get("source_format"):
        held = facts["file_holds"]
        lines.append(("format", f"{facts['source_format']}, holding {len(held)} series"))
        lines.extend(("  holds", entry) for entry in held)
    if facts.get("channel_names"):
        lines.append(("channel names", ", ".join(facts["channel_names"])))
    return lines


def format_info(facts: dict) -> str:
    """The facts as aligned lines for a person."""
    names = [label.rsplit("/", 1)[-1] for label in facts["slices"]]
    order = ", ".join(names) if len(names) <= 6 else f"{', '.join(names[:3])}, ..., {', '.join(names[-2:])}"
    bits = f", {facts['bits_used']} bits used" if facts["bits_used"] is not None else ""
    low, high = facts["value_range"]
    physical = facts["physical"]
    if physical["pixel_x_um"] is not None:
        pixel = f"{physical['pixel_x_um']:g} x {physical['pixel_y_um']:g} um ({physical['pixel_source']})"
    else:
        pixel = "unknown (no OME, ImageJ or resolution metadata)"
    if physical["z_step_um"] is not None:
        z_step = f"{physical['z_step_um']:g} um ({physical['z_source']})"
    else:
        z_step = "unknown: height maps are in slice units (--z-step UM)"
    plan = facts["memory_plan"]
    if plan["tiles"] > 1:
        layout = f"{plan['tiles']} tiles of up to {plan['tile_pixels']} px with a {plan['halo']} px halo"
    else:
        layout = "the whole image at once"
    decision_height, decision_width = facts["decision_size"]
    if (decision_height, decision_width) != (facts["height"], facts["width"]):
        layout = f"decided at {decision_width} x {decision_height}, {layout}"
    lines = [
        ("stack", facts["stack"]),
        ("slices", f"{facts['n_slices']} in this order: {order}"),
        ("size", f"{facts['width']} x {facts['height']}, {facts['channels']} channel(s), axes {facts['axes']}"),
        *_format_lines(facts),
        ("channels", _channels_line(facts)),
        ("pixels", f"{facts['dtype']}{bits}, values {low:g} to {high:g}"),
        ("pixel size", pixel),
        ("z-step", z_step),
        ("strategy", facts["strategy"]),
        (
            "memory",
            f"budget {_size(plan['budget_bytes'])}: {layout}, decoded slices in {plan['decoded_slices']}, "
            f"estimated peak {_size(plan['estimated_peak_bytes'])}",
        ),
    ]
    alignment = facts["alignment"]
    if alignment is not None:
        reference = alignment["reference"]
        lines.append(("alignment", f"{alignment['mode']}, to slice {reference} ({names[reference]})"))
        if alignment["auto_verdict"] is not None:
            lines.append(("  auto", alignment["auto_verdict"]))
        for entry in alignment["slices"]:
            dx, dy = entry["shift_px"]
            state = "" if entry["registered"] else " (not registered: kept its neighbour's)"
            if alignment["auto_verdict"] is not None and entry["slice"] != reference:
                state += f", {entry['significance']:g} standard errors"
            lines.append(
                (
                    f"  {entry['slice']}: {names[entry['slice']]}",
                    f"shift {dx:+.2f}, {dy:+.2f} px, scale {entry['scale']:.5f}, "
                    f"rotation {entry['rotation_deg']:+.3f} deg{state}",
                )
            )
        lines.extend(("  warning", warning) for warning in alignment["warnings"])
    width = max(len(name) for name, _ in lines)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in lines)
