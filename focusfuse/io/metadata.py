"""Physical sizes of a stack: pixel size (X, Y) and z-step, in micrometres, and where each came from.

Read from the first TIFF of a stack, in this order: OME-XML (``PhysicalSizeX/Y/Z`` and
their units), ImageJ metadata (``unit``, ``spacing``, with the resolution tags as
pixels per unit), plain TIFF resolution tags (pixels per inch or centimetre). Written
back to TIFF outputs as ImageJ metadata and resolution tags, so that Fiji shows the
right scale.
"""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import tifffile

MICROMETRES_PER = {
    "pm": 1e-6,
    "nm": 1e-3,
    "µm": 1.0,
    "μm": 1.0,
    "um": 1.0,
    "micron": 1.0,
    "microns": 1.0,
    "micrometer": 1.0,
    "micrometre": 1.0,
    "\\u00b5m": 1.0,
    "mm": 1e3,
    "cm": 1e4,
    "m": 1e6,
    "inch": 25400.0,
    "in": 25400.0,
}
RESOLUTION_UNIT_UM = {2: 25400.0, 3: 1e4}  # TIFF ResolutionUnit: 2 inch, 3 centimetre


@dataclass(frozen=True)
class PhysicalSize:
    """Micrometres per pixel (X, Y) and between slices (Z); None where the files do not say."""

    pixel_x_um: float | None = None
    pixel_y_um: float | None = None
    z_step_um: float | None = None
    pixel_source: str | None = None
    z_source: str | None = None

    @property
    def has_pixel_size(self) -> bool:
        return self.pixel_x_um is not None and self.pixel_y_um is not None

    def with_z_step(self, z_step_um: float | None, source: str) -> PhysicalSize:
        return self if z_step_um is None else replace(self, z_step_um=float(z_step_um), z_source=source)

    def report(self) -> dict:
        return asdict(self)


def to_micrometres(value: float, unit: str | None) -> float | None:
    """``value`` in ``unit`` as micrometres; None for an unknown unit or a non-positive value."""
    factor = MICROMETRES_PER.get((unit or "µm").strip().lower().replace("\\u00b5", "µ"))
    if factor is None or not value > 0:
        return None
    return _tidy(float(value) * factor)


def _tidy(micrometres: float) -> float:
    """Ten significant digits: 0.65 stays 0.65 after a trip through a TIFF rational and a unit factor."""
    return float(f"{micrometres:.10g}")


def read_physical_size(path: Path) -> PhysicalSize:
    """What a TIFF says of its physical sizes; an empty PhysicalSize for other files or unreadable metadata."""
    try:
        with tifffile.TiffFile(path) as tif:
            if tif.is_ome and tif.ome_metadata:
                found = physical_size_from_ome(tif.ome_metadata)
                if found.has_pixel_size or found.z_step_um is not None:
                    return found
            page = tif.pages.first
            tags = {name: page.tags[name].value for name in ("XResolution", "YResolution", "ResolutionUnit")
                    if name in page.tags}  # fmt: skip
            if tif.is_imagej and tif.imagej_metadata:
                return _from_imagej(tif.imagej_metadata, tags)
            return _from_resolution_tags(tags)
    except Exception:  # not a TIFF, or metadata tifffile cannot parse: sizes are then unknown
        return PhysicalSize()


def physical_size_from_ome(xml: str) -> PhysicalSize:
    try:
        pixels = ElementTree.fromstring(xml).find(".//{*}Pixels")
    except ElementTree.ParseError:
        return PhysicalSize()
    if pixels is None:
        return PhysicalSize()

    def size(axis: str) -> float | None:
        value = pixels.get(f"PhysicalSize{axis}")
        return None if value is None else to_micrometres(float(value), pixels.get(f"PhysicalSize{axis}Unit"))

    x, y, z = size("X"), size("Y"), size("Z")
    return PhysicalSize(x, y, z, "OME-XML PhysicalSizeX/Y" if x and y else None, "OME-XML PhysicalSizeZ" if z else None)


def _pixels_per_unit(tags: dict, name: str) -> float | None:
    value = tags.get(name)
    if not value or not value[1] or not value[0]:
        return None
    return value[0] / value[1]


def _from_imagej(metadata: dict, tags: dict) -> PhysicalSize:
    unit = str(metadata.get("unit", ""))
    per_x, per_y = _pixels_per_unit(tags, "XResolution"), _pixels_per_unit(tags, "YResolution")
    x = to_micrometres(1.0 / per_x, unit) if per_x and unit else None
    y = to_micrometres(1.0 / per_y, unit) if per_y and unit else None
    spacing = metadata.get("spacing")
    z = to_micrometres(float(spacing), unit) if spacing is not None and unit else None
    return PhysicalSize(x, y, z, "ImageJ unit and resolution" if x and y else None, "ImageJ spacing" if z else None)


def _from_resolution_tags(tags: dict) -> PhysicalSize:
    per_unit = RESOLUTION_UNIT_UM.get(int(tags.get("ResolutionUnit", 1)))
    per_x, per_y = _pixels_per_unit(tags, "XResolution"), _pixels_per_unit(tags, "YResolution")
    if per_unit is None or not per_x or not per_y:
        return PhysicalSize()
    return PhysicalSize(_tidy(per_unit / per_x), _tidy(per_unit / per_y), pixel_source="TIFF resolution tags")


def tiff_physical_arguments(physical: PhysicalSize | None, imagej: bool) -> dict:
    """tifffile.imwrite arguments for the pixel size (and z-step): ImageJ metadata where ImageJ can hold the image."""
    if physical is None or not physical.has_pixel_size:
        return {}
    resolution = (1.0 / physical.pixel_x_um, 1.0 / physical.pixel_y_um)  # type: ignore[operator]
    if imagej:
        metadata: dict = {"unit": "um"}
        if physical.z_step_um is not None:
            metadata["spacing"] = physical.z_step_um
        return {"imagej": True, "resolution": resolution, "metadata": metadata}
    per_cm = (1e4 * resolution[0], 1e4 * resolution[1])
    return {"resolution": per_cm, "resolutionunit": "CENTIMETER"}
