"""Finding the z-stacks in an acquisition tree and where their results go.

A folder holding two or more single images is one stack (its images in natural
order, as ``focusfuse stack DIR`` reads it); a multipage TIFF whose planes run
along Z is a stack of its own, and so is a CZI, ND2 or LIF file or an OME-Zarr
folder (one stack per scene or position where it holds several:
``plate.scene1``). Results mirror the tree: the stack ``day1/pos3`` (a folder, or
``day1/pos3.ome.tif``) is fused to ``OUTROOT/day1/pos3.png`` with its index map and
timing report beside it, named as ``stack`` names them.
"""

from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from focusfuse.errors import FocusFuseError
from focusfuse.fusion.pipeline import default_index_map_path, default_timing_path
from focusfuse.io.microscope import MICROSCOPE_SUFFIXES, SeriesSelection, microscope_kind, open_microscope_file
from focusfuse.io.microscope.ome_zarr import is_ome_zarr
from focusfuse.io.reader import TIFF_SUFFIXES, images_in_folder, multipage_depth, natural_key

OUTPUT_FORMATS = ("png", "tif")


@dataclass(frozen=True)
class StackJob:
    """One stack to consider: its name (the path relative to its root), its input files and outputs.

    Attributes:
        name: ``day1/pos3``, the output's path under OUTROOT without suffix.
        inputs: the slice files in order, or the one multipage TIFF.
        fused: the fused image's path; the index map and timing report lie beside it.
        n_slices: images in the folder, or planes in the TIFF (0 when unreadable).
        folder: the folder whose images are the slices (None for a multipage TIFF).
        problem: why it cannot be fused, found while discovering (an unreadable TIFF).
        selection: the scene or position of a microscope file that holds several.
    """

    name: str
    inputs: tuple[Path, ...]
    fused: Path
    n_slices: int
    folder: Path | None = None
    problem: str | None = None
    selection: SeriesSelection | None = None

    @property
    def source(self) -> str:
        """The folder, or the multipage TIFF: what messages name."""
        return str(self.folder if self.folder is not None else self.inputs[0])

    @property
    def index_map(self) -> Path:
        return default_index_map_path(self.fused)

    @property
    def timing(self) -> Path:
        return default_timing_path(self.fused)

    @property
    def lock(self) -> Path:
        return self.fused.with_name(f".{self.fused.stem}.lock")

    @property
    def failure(self) -> Path:
        """Records a failure, so that later runs do not fail again on the same files."""
        return self.fused.with_name(self.fused.stem + ".failed.json")


@dataclass(frozen=True)
class Passed:
    """Something in the tree that looks like a stack but is not fused, and why (``--dry-run`` lists them)."""

    name: str
    reason: str


@dataclass
class Discovery:
    jobs: list[StackJob] = field(default_factory=list)
    passed: list[Passed] = field(default_factory=list)


def stack_name(path: Path) -> str:
    """A multipage TIFF's or microscope file's name without its suffixes: ``pos3.ome.tif`` -> ``pos3``."""
    name = path.name
    lowered = name.lower()
    for suffix in (".ome.tiff", ".ome.tif", ".ome.zarr", *TIFF_SUFFIXES, *MICROSCOPE_SUFFIXES):
        if lowered.endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _images_in(folder: Path) -> list[Path]:
    try:
        return images_in_folder(folder)
    except OSError:  # gone or unreadable since the walk listed it
        return []


def _walk(root: Path, skip: Path) -> list[Path]:
    """Every folder under ``root`` (itself included), in natural order, without hidden folders or ``skip``."""
    folders = []
    for current, subfolders, _ in os.walk(root):
        here = Path(current)
        if here != root and is_ome_zarr(here):
            subfolders[:] = []  # an OME-Zarr image is a stack of its parent folder, not a tree of stacks
            continue
        subfolders[:] = sorted(
            (d for d in subfolders if not d.startswith(".") and (here / d).resolve() != skip),
            key=natural_key,
        )
        folders.append(here)
    return folders


def _microscope_inputs(folder: Path) -> list[Path]:
    """The CZI, ND2 and LIF files and OME-Zarr folders directly in ``folder``, in natural order."""
    try:
        entries = list(folder.iterdir())
    except OSError:
        return []
    found = [
        entry
        for entry in entries
        if not entry.name.startswith(".")
        and ((entry.is_file() and entry.suffix.lower() in MICROSCOPE_SUFFIXES) or is_ome_zarr(entry))
    ]
    return sorted(found, key=lambda p: natural_key(p.name))


def _microscope_jobs(path: Path, name: str, out_root: Path, output_format: str) -> tuple[list[StackJob], list[Passed]]:
    """One job per z-stack of a microscope file: per scene or position where it holds several."""
    try:
        kind = microscope_kind(path)
        described = open_microscope_file(path, kind)
    except FocusFuseError as error:
        return [StackJob(name, (path,), _output(out_root, name, output_format), 0, problem=str(error))], []
    jobs, passed = [], []
    several = len(described.series) > 1
    for series in described.series:
        job_name = f"{name}.{described.series_word}{series.index}" if several else name
        selection = None
        if several and described.option == "--position":
            selection = SeriesSelection(position=series.index)
        elif several:
            selection = SeriesSelection(scene=series.index)
        problem = None
        if series.size_t > 1:
            problem = (
                f"{path}: holds a time series (T={series.size_t}); batch fuses z-stacks, "
                f"`focusfuse stack --time N` one time point"
            )
        if series.size_z < 2 and problem is None:
            passed.append(Passed(job_name, "a single plane (Z=1), not a z-stack"))
            continue
        output = _output(out_root, job_name, output_format)
        jobs.append(StackJob(job_name, (path,), output, series.size_z, problem=problem, selection=selection))
    return jobs, passed


def discover_stacks(
    roots: list[Path],
    out_root: Path,
    *,
    output_format: str = "png",
    pattern: str | None = None,
    min_slices: int = 2,
) -> Discovery:
    """The stacks under ``roots`` and where each one's results go under ``out_root``.

    Names are relative to their root; a root that is itself a stack is named after
    its folder. OUTROOT is never searched, even when it lies inside a root.
    ``pattern`` (a shell pattern) is matched against the stack's name.
    """
    if output_format not in OUTPUT_FORMATS:
        raise FocusFuseError(f"--format {output_format}: use one of {', '.join(OUTPUT_FORMATS)}")
    found = Discovery()
    skip = out_root.resolve()
    for root in roots:
        if not root.is_dir():
            raise FocusFuseError(f"{root}: not a directory")
        for folder in _walk(root, skip):
            relative = folder.relative_to(root).as_posix()
            folder_name = root.resolve().name if relative == "." else relative
            slices: list[Path] = []
            unreadable: list[tuple[Path, str]] = []
            for image in _images_in(folder):
                depth, problem = _tiff_depth(image) if image.suffix.lower() in TIFF_SUFFIXES else (1, None)
                name = f"{folder_name}/{stack_name(image)}" if relative != "." else stack_name(image)
                if problem is not None:
                    unreadable.append((image, problem))
                elif depth > 1:
                    found.jobs.append(StackJob(name, (image,), _output(out_root, name, output_format), depth))
                else:
                    slices.append(image)
            for path in _microscope_inputs(folder):
                name = f"{folder_name}/{stack_name(path)}" if relative != "." else stack_name(path)
                jobs, passed = _microscope_jobs(path, name, out_root, output_format)
                found.jobs.extend(jobs)
                found.passed.extend(passed)
            if slices:
                # An unreadable TIFF beside single images is one of their slices: the stack
                # fails naming it, rather than being fused without it.
                slices = sorted(slices + [image for image, _ in unreadable], key=lambda p: natural_key(p.name))
                output = _output(out_root, folder_name, output_format)
                found.jobs.append(StackJob(folder_name, tuple(slices), output, len(slices), folder=folder))
            else:
                for image, problem in unreadable:
                    name = f"{folder_name}/{stack_name(image)}" if relative != "." else stack_name(image)
                    output = _output(out_root, name, output_format)
                    found.jobs.append(StackJob(name, (image,), output, 0, problem=problem))
    return _select(found, pattern, min_slices)


def _tiff_depth(path: Path) -> tuple[int, str | None]:
    """(planes along Z, None), or (0, the problem) for a TIFF that cannot be read as an image or a stack."""
    try:
        return multipage_depth(path), None
    except FocusFuseError as error:
        return 0, str(error)
    except OSError as error:
        return 0, f"{path}: {error.strerror or error}"


def _output(out_root: Path, name: str, output_format: str) -> Path:
    return out_root / f"{name}.{output_format}"


def _select(found: Discovery, pattern: str | None, min_slices: int) -> Discovery:
    """Apply --pattern and --min-slices, and refuse two stacks that would write the same files."""
    selected = Discovery(passed=list(found.passed))
    owners: dict[Path, StackJob] = {}
    for job in found.jobs:
        if pattern is not None and not fnmatch.fnmatchcase(job.name, pattern):
            selected.passed.append(Passed(job.name, f"does not match --pattern {pattern}"))
            continue
        if job.problem is None and job.n_slices < min_slices:
            unit = "image" if job.folder is not None else "plane"
            count = f"{job.n_slices} {unit}" + ("s" if job.n_slices != 1 else "")
            selected.passed.append(Passed(job.name, f"{count}, fewer than --min-slices {min_slices}"))
            continue
        owner = owners.get(job.fused)
        if owner is not None:
            clash = f"its results would overwrite those of {owner.source} ({job.fused})"
            selected.jobs.append(replace(job, problem=clash))
            continue
        owners[job.fused] = job
        selected.jobs.append(job)
    return selected
