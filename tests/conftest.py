"""Shared fixtures: the shipped model, the bundled demo stacks, synthetic stacks with truth."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from focusfuse.io.color import unit_scale
from focusfuse.model.weights import find_weights, load_model
from focusfuse.training.synthetic import make_depth_stack, procedural_texture

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"
SHARED = REPO.parent / "shared"


@pytest.fixture(autouse=True)
def signal_handlers_restored():
    """The CLI, run in-process, installs its stop handlers (and ignores stops once done), and a stop is raised
    once per command: both undone around each test."""
    from focusfuse.interruption import start_command

    saved = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)}
    start_command()  # no stop left over from another test
    yield
    for number, handler in saved.items():
        signal.signal(number, handler)


@pytest.fixture(scope="session")
def model():
    return load_model(find_weights())


@pytest.fixture(scope="session")
def demo_stack_dir() -> Path:
    return EXAMPLES / "stack8"


@pytest.fixture(scope="session")
def demo_truth() -> np.ndarray:
    return cv2.imread(str(EXAMPLES / "stack8_truth" / "index.png"), cv2.IMREAD_UNCHANGED)


def step_depth_stack(
    dtype=np.uint8, n_slices: int = 4, size: int = 96, seed: int = 0, colour: bool = False, width: int | None = None
):
    """Procedural texture (``size`` rows, ``width`` columns, square by default) in vertical bands,
    band k in focus in slice k (blur 2.5 px per slice).

    Returns the SyntheticStack; its truth is exact away from band borders.
    """
    rng = np.random.default_rng(seed)
    width = width or size
    texture = procedural_texture(size, width, rng)
    if colour:
        texture = np.stack([texture, np.roll(texture, 7, axis=0), np.roll(texture, 13, axis=1)], axis=2)
    full = unit_scale(dtype)
    sharp = (texture * full).round().astype(dtype) if dtype != np.float32 else texture.astype(np.float32)
    depth = np.zeros((size, width), np.float32)
    band = width // n_slices
    for k in range(n_slices):
        depth[:, k * band : (k + 1) * band] = k
    depth[:, n_slices * band :] = n_slices - 1
    return make_depth_stack(sharp, depth, n_slices, blur_per_slice=2.5, rng=rng)


def interior(mask_shape, n_slices: int, margin: int = 8) -> np.ndarray:
    """Pixels at least ``margin`` from a band border and the image edge."""
    height, width = mask_shape
    keep = np.zeros(mask_shape, bool)
    band = width // n_slices
    for k in range(n_slices):
        keep[margin:-margin, k * band + margin : (k + 1) * band - margin] = True
    return keep


def run_as_nobody(arguments: list[str], **kwargs):
    """Run ``python ARGUMENTS`` as user nobody, where permissions apply (root reads and writes anything).

    The interpreter must be one nobody may run (this one, or the system's python3 of the
    same version, with this environment's packages on PYTHONPATH); skips with the
    reason where there is none.
    """
    import pwd
    import shutil
    import subprocess
    import sysconfig

    import focusfuse

    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("not root: the test runs directly")
    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("running as root and there is no user 'nobody' to drop to")
    packages = [str(Path(focusfuse.__file__).resolve().parents[1]), sysconfig.get_paths()["purelib"]]
    environment = {**os.environ, "HOME": "/tmp", "PYTHONPATH": os.pathsep.join(packages)}
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    for interpreter in (sys.executable, shutil.which(f"python{version}", path="/usr/bin:/usr/local/bin")):
        if interpreter is None:
            continue
        try:
            completed = subprocess.run(
                [interpreter, *arguments],
                capture_output=True,
                text=True,
                user=nobody.pw_uid,
                group=nobody.pw_gid,
                extra_groups=[],
                env=environment,
                **kwargs,
            )
        except PermissionError:
            continue
        if "ModuleNotFoundError" in completed.stderr or "ImportError" in completed.stderr:
            continue
        return completed
    pytest.skip(f"running as root and user nobody cannot run a Python {version} that imports focusfuse")


@pytest.fixture
def shared_tmp():
    """A folder every user may enter (pytest's own tmp_path is private to root)."""
    import shutil
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="focusfuse-perm-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)
