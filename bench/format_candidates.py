#!/usr/bin/env python3
"""The readers focusfuse[formats] could use, side by side: seconds and peak memory to read one z-stack.

The stack of bench/formats.py (10 slices x 2 channels x 2048x1536, uint16) is written
as CZI (plain and zstd) and LIF; each candidate library reads every plane of it as
focusfuse would (one plane at a time where the library can, else the whole file),
in a child process of its own, five times: the least wall seconds and the largest
peak resident memory the reading added after the imports. CZI: pylibCZIrw (chosen) against czifile; LIF: liffile
(chosen) against readlif. A library that is not importable is a row that says so;
install the others beside focusfuse with
``pip install --no-deps --target /tmp/candidates readlif czifile beautifulsoup4 soupsieve``
and run with ``PYTHONPATH=/tmp/candidates``.
(2) libCZI's working memory: one 6000x6000 uint16 plane read by pylibCZIrw, its
added peak in planes (what focusfuse's memory check counts for CZI).
(3) With --install-sizes: each candidate installed by pip, with what it requires, into
an empty folder; its size without numpy (which focusfuse has already). Needs PyPI.
Usage: PYTHONPATH=/tmp/candidates python bench/format_candidates.py [--install-sizes]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from formats import PIXEL_UM, SLICES, Z_STEP_UM, ZSTD, synthetic_zcyx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "io"))
from microscope_files import write_czi, write_lif  # noqa: E402

# Each reads every plane of PATH (Z planes x 2 channels) and leaves ``planes`` (the count read).
READERS = {
    "pylibCZIrw": """
from pylibCZIrw import czi
with czi.open_czi(PATH) as document:
    planes = 0
    for z in range(SLICES):
        for c in range(2):
            document.read(plane={"Z": z, "C": c, "T": 0}); planes += 1
""",
    "czifile": """
import czifile
with czifile.CziFile(PATH) as document:
    planes = document.asarray().size // (2048 * 1536)  # no plane access: the whole file
""",
    "liffile": """
import liffile
with liffile.LifFile(PATH) as document:
    planes = 0
    for z in range(SLICES):
        for c in range(2):
            document.images[0].frame(Z=z, C=c); planes += 1
""",
    "readlif": """
from readlif.reader import LifFile
image = LifFile(PATH).get_image(0)
planes = 0
for z in range(SLICES):
    for c in range(2):
        image.get_frame(z=z, c=c); planes += 1
""",
}
# The peak is the process's own VmHWM: ru_maxrss carries the (larger) parent's peak across fork and exec.
CHILD = """
import json, sys, time
PATH, SLICES = sys.argv[1], int(sys.argv[2])
def high_water_kib():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM"))
import numpy
{imports}
before = high_water_kib()
started = time.perf_counter()
{body}
seconds = time.perf_counter() - started
peak = high_water_kib() - before
print(json.dumps({{"seconds": seconds, "peak_mib": peak / 1024, "planes": planes}}))
"""


def measure(library: str, path: Path, repeats: int = 5) -> str:
    """Least seconds and largest added peak over ``repeats`` child processes."""
    body = READERS[library]
    imports = "\n".join(line for line in body.strip().splitlines() if line.startswith(("import", "from")))
    script = CHILD.format(imports=imports, body=body)
    records = []
    for _ in range(repeats):
        done = subprocess.run([sys.executable, "-c", script, str(path), str(SLICES)], capture_output=True, text=True)
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["no message"])[-1]
            return f"failed: {last[:100]}"
        records.append(json.loads(done.stdout))
    seconds = min(record["seconds"] for record in records)
    peak = max(record["peak_mib"] for record in records)
    return f"{seconds:8.3f} s {peak:8.0f} MiB  ({records[0]['planes']} planes)"


def czi_working_planes(folder: Path, side: int = 6000) -> str:
    """The peak a single pylibCZIrw read adds, in planes of the plane it returns (plain and zstd)."""
    plane = np.random.default_rng(0).integers(0, 4095, (1, 1, side, side), dtype=np.uint16)
    plane_mib = plane.nbytes / 2**20
    read_one = "with czi.open_czi(PATH) as document:\n    document.read(plane={'Z': 0, 'C': 0, 'T': 0}); planes = 1"
    script = CHILD.format(imports="from pylibCZIrw import czi", body=read_one)
    results = []
    for name, compression in (("plain", None), ("zstd", ZSTD)):
        path = folder / f"one-plane-{name}.czi"
        write_czi(path, [plane], pixel_um=PIXEL_UM, z_step_um=Z_STEP_UM, compression=compression)
        command = [sys.executable, "-c", script, str(path), "1"]
        added = json.loads(subprocess.run(command, capture_output=True, text=True, check=True).stdout)["peak_mib"]
        results.append(f"{name} {added:.0f} MiB = {added / plane_mib:.1f} planes")
    return f"one {side}x{side} uint16 plane ({plane_mib:.1f} MiB) read by pylibCZIrw adds: " + "; ".join(results)


CANDIDATES = [
    ["pylibCZIrw==6.1.0"], ["czifile==2019.7.2.3"], ["nd2==0.12.0"], ["liffile==2026.2.16"], ["readlif==0.6.6"],
    ["zarr==3.1.6"], ["ome-zarr==0.18.0"], ["bioio", "bioio-czi", "bioio-nd2", "bioio-lif", "bioio-ome-zarr"],
]  # fmt: skip


def folder_mib(folder: Path) -> float:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file()) / 2**20


def install_sizes(scratch: Path) -> None:
    """Each candidate as pip installs it, with what it requires; numpy's share left out."""
    print("\npip install --target (with requirements), size without numpy")
    for packages in CANDIDATES:
        target = scratch / "install"
        shutil.rmtree(target, ignore_errors=True)
        command = [sys.executable, "-m", "pip", "install", "--quiet", "--target", str(target), *packages]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            print(f"{' '.join(packages):<60} failed: {done.stderr.strip().splitlines()[-1:]}")
            continue
        numpy = sum(folder_mib(path) for path in target.glob("numpy*") if path.is_dir())
        requirements = len(list(target.glob("*.dist-info"))) - 1
        print(f"{' '.join(packages):<60} {folder_mib(target) - numpy:7.1f} MiB  ({requirements} other packages)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--install-sizes", action="store_true")
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        zcyx = synthetic_zcyx(1536, 2048)
        files = {
            "CZI": folder / "stack.czi",
            "CZI zstd": folder / "zstd.czi",
            "LIF": folder / "stack.lif",
        }
        write_czi(files["CZI"], [zcyx], pixel_um=PIXEL_UM, z_step_um=Z_STEP_UM)
        write_czi(files["CZI zstd"], [zcyx], pixel_um=PIXEL_UM, z_step_um=Z_STEP_UM, compression=ZSTD)
        write_lif(files["LIF"], {"stack": zcyx}, pixel_um=PIXEL_UM, z_step_um=Z_STEP_UM)
        print(f"{SLICES} slices x 2 channels x 2048x1536 uint16; each library in its own process, least of 5")
        print(f"{'file':<10} {'library':<12} {'seconds':>10} {'added peak':>12}")
        for name, libraries in (("CZI", ("pylibCZIrw", "czifile")), ("CZI zstd", ("pylibCZIrw", "czifile")),
                                ("LIF", ("liffile", "readlif"))):  # fmt: skip
            for library in libraries:
                print(f"{name:<10} {library:<12} {measure(library, files[name])}")
        print("\n" + czi_working_planes(folder))
        if arguments.install_sizes:
            install_sizes(folder)


if __name__ == "__main__":
    main()
