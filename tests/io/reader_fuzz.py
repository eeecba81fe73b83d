"""Fuzzing the readers: mutated, truncated and spliced image files, each read (and some fused) in a child process.

Run as a script it is the child: it makes valid seed files of every format the
readers take, mutates them, and reads each mutant as a stack; every read must end in
slices or in one FocusFuseError line. It prints one JSON line per mutant, and names
the file it is about to read in ``current.txt`` first, so that a crash (a signal
from a native decoder) or a hang names its file. ``tests/io/test_reader_fuzz.py``
runs a few hundred within the suite; ``bench/fuzz_readers.py`` runs thousands.

    python tests/io/reader_fuzz.py --count 300 --seed 0 --folder /tmp/fuzz
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
from pathlib import Path

import cv2
import numpy as np
import tifffile

MUTATIONS = ("flip", "truncate", "splice", "repeat", "insert", "big-number", "zero-run")


def seed_images() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    gray = cv2.GaussianBlur(rng.integers(0, 256, (40, 48), dtype=np.uint8), (3, 3), 0)
    rgb = np.dstack([gray, gray[::-1], gray[:, ::-1]])
    return {"gray": gray, "rgb": rgb, "rgba": np.dstack([rgb, gray]), "gray16": gray.astype(np.uint16) * 257}


def exif_segment(orientation: int) -> bytes:
    tiff = b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", 1)
    tiff += struct.pack("<HHIHH", 0x0112, 3, 1, orientation, 0) + struct.pack("<I", 0)
    body = b"Exif\x00\x00" + tiff
    return b"\xff\xe1" + struct.pack(">H", len(body) + 2) + body


def encode(suffix: str, image: np.ndarray, *parameters: int) -> bytes:
    ok, data = cv2.imencode(suffix, image, list(parameters))
    assert ok, suffix
    return data.tobytes()


def write_seeds(folder: Path) -> list[Path]:
    """Valid files of every kind the readers take: the fuzzer's starting points."""
    from PIL import Image

    images = seed_images()
    folder.mkdir(parents=True, exist_ok=True)
    files: dict[str, bytes] = {
        "gray.png": encode(".png", images["gray"]),
        "gray16.png": encode(".png", images["gray16"]),
        "rgb.png": encode(".png", images["rgb"]),
        "rgba.png": encode(".png", images["rgba"]),
        "baseline.jpg": encode(".jpg", images["rgb"]),
        "gray.jpg": encode(".jpg", images["gray"]),
        "progressive.jpg": encode(".jpg", images["rgb"], cv2.IMWRITE_JPEG_PROGRESSIVE, 1),
        "restarts.jpg": encode(".jpg", images["rgb"], cv2.IMWRITE_JPEG_RST_INTERVAL, 2),
        "rgb.bmp": encode(".bmp", images["rgb"]),
        "rgb.webp": encode(".webp", images["rgb"]),
    }
    baseline = files["baseline.jpg"]
    files["exif.jpg"] = baseline[:2] + exif_segment(6) + baseline[2:] + b"trailer" * 30
    for name, data in files.items():
        (folder / name).write_bytes(data)
    Image.fromarray(images["rgb"]).convert("P").save(folder / "palette.png")
    Image.fromarray(np.dstack([images["gray"], images["gray"]]), "LA").save(folder / "gray-alpha.png")
    tifffile.imwrite(folder / "plain.tif", images["rgb"])
    tifffile.imwrite(folder / "deflate.tif", images["gray16"], compression="zlib")
    tifffile.imwrite(folder / "lzw.tif", images["gray"], compression="lzw")
    planes = np.moveaxis(images["rgb"], -1, 0)
    tifffile.imwrite(folder / "planar.tif", planes, photometric="rgb", planarconfig="separate")
    stack = np.stack([images["gray"], images["gray"][::-1], images["gray"][:, ::-1]])
    tifffile.imwrite(folder / "imagej.tif", stack, imagej=True, metadata={"axes": "ZYX"})
    tifffile.imwrite(folder / "ome.ome.tif", stack, metadata={"axes": "ZYX"})
    write_microscope_seeds(folder, np.stack([stack, stack[:, ::-1]], axis=1).astype(np.uint16) * 16)
    return sorted(folder.iterdir())


def write_microscope_seeds(folder: Path, zcyx: np.ndarray) -> None:
    """CZI (plain and zstd), LIF and ND2 z-stacks of two channels, where their readers are installed."""
    import importlib.util

    from microscope_files import write_czi, write_lif, write_nd2

    if importlib.util.find_spec("pylibCZIrw") is not None:
        write_czi(folder / "stack.czi", [zcyx], pixel_um=0.5, z_step_um=1.0)
        write_czi(folder / "zstd.czi", [zcyx], pixel_um=0.5, z_step_um=1.0, compression="zstd1:ExplicitLevel=1")
    if importlib.util.find_spec("liffile") is not None:
        write_lif(folder / "stack.lif", {"stack": zcyx}, pixel_um=0.5, z_step_um=1.0)
    if importlib.util.find_spec("nd2") is not None:
        write_nd2(folder / "stack.nd2", [zcyx], pixel_um=0.5, z_step_um=1.0, channel_names=["A", "B"])


def mutate(data: bytes, rng: np.random.Generator, others: list[bytes]) -> tuple[str, bytes]:
    """One random mutation of ``data``; ``others`` are files to splice from."""
    kind = MUTATIONS[rng.integers(len(MUTATIONS))]
    size = len(data)
    at = int(rng.integers(0, size))
    buffer = bytearray(data)
    if kind == "flip":
        for _ in range(int(rng.integers(1, 9))):
            buffer[int(rng.integers(0, size))] ^= 1 << int(rng.integers(8))
    elif kind == "truncate":
        del buffer[max(1, at) :]
    elif kind == "splice":
        other = others[int(rng.integers(len(others)))]
        buffer = buffer[:at] + bytearray(other[int(rng.integers(0, len(other))) :])
    elif kind == "repeat":
        length = int(rng.integers(1, 200))
        buffer[at:at] = buffer[at : at + length]
    elif kind == "insert":
        buffer[at:at] = rng.integers(0, 256, int(rng.integers(1, 64)), dtype=np.uint8).tobytes()
    elif kind == "big-number":
        buffer[at : at + 4] = struct.pack(">I", int(rng.choice([0, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF, 65500])))
    else:  # zero-run
        length = int(rng.integers(1, 512))
        buffer[at : at + length] = bytes(min(length, size - at))
    return kind, bytes(buffer)


def read_as_stack(path: Path) -> str:
    """``ok N`` (slices read) or ``error LINE``; anything else raises."""
    from focusfuse.errors import FocusFuseError
    from focusfuse.io.reader import open_stack

    try:
        source = open_stack([path])
        for index in range(len(source)):
            source.read(index)
    except FocusFuseError as error:
        message = str(error)
        if "\n" in message or not message:
            raise AssertionError(f"not one line: {message!r}") from error
        return f"error {message}"
    return f"ok {len(source)}"


def fuse_as_pair(path: Path, out: Path) -> str:
    from focusfuse import fuse_stack
    from focusfuse.errors import FocusFuseError

    try:
        fuse_stack([path, path], device="cpu", output=out / "fused.tif")
    except FocusFuseError as error:
        return f"error {error}"
    return "fused"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--folder", type=Path, required=True)
    parser.add_argument("--fuse-every", type=int, default=25, help="also fuse every k-th mutant that reads")
    arguments = parser.parse_args()
    seeds = write_seeds(arguments.folder / "seeds")
    contents = [seed.read_bytes() for seed in seeds]
    rng = np.random.default_rng(arguments.seed)
    mutants = arguments.folder / "mutants"
    mutants.mkdir(exist_ok=True)
    out = arguments.folder / "out"
    out.mkdir(exist_ok=True)
    read_well = 0
    for number in range(arguments.count):
        pick = int(rng.integers(len(seeds)))
        kind, data = mutate(contents[pick], rng, contents)
        path = mutants / f"{number:05d}-{kind}-{seeds[pick].name}"
        path.write_bytes(data)
        (arguments.folder / "current.txt").write_text(str(path))
        try:
            outcome = read_as_stack(path)
            if outcome.startswith("ok"):
                read_well += 1
                if read_well % arguments.fuse_every == 0:
                    outcome += "; " + fuse_as_pair(path, out)
        except Exception as error:  # a traceback: what the fuzzer is looking for
            outcome = f"traceback {type(error).__name__}: {str(error)[:300]}"
        print(json.dumps({"file": path.name, "outcome": outcome}), flush=True)
        if not outcome.startswith("traceback"):
            path.unlink()


if __name__ == "__main__":
    sys.exit(main())
