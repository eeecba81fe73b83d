"""Finding, checking and loading the network weights.

Search order: an explicit path, then $FOCUSFUSE_WEIGHTS, then the copy installed with
the package (``<prefix>/share/focusfuse/weights``), then the ``weights/`` folder of a
source checkout beside the package. Never the working directory: cron runs from /.
Every weights file has a ``.sha256`` sidecar that loading checks.
"""

from __future__ import annotations

import hashlib
import os
import sys
import threading
from pathlib import Path

import torch

from focusfuse.errors import FocusFuseError
from focusfuse.model.network import GACN

WEIGHTS_NAME = "gacn.pt"
ENV_VARIABLE = "FOCUSFUSE_WEIGHTS"


def shipped_weights_candidates() -> list[Path]:
    """Where an installed or checked-out focusfuse keeps its own weights, in order."""
    return [
        Path(sys.prefix) / "share" / "focusfuse" / "weights" / WEIGHTS_NAME,
        Path(__file__).resolve().parents[2] / "weights" / WEIGHTS_NAME,
    ]


def find_weights(explicit: str | os.PathLike | None = None) -> Path:
    """The weights file to use; raises FocusFuseError naming what was tried."""
    if explicit is not None:
        path = Path(explicit)
        if not path.is_file():
            raise FocusFuseError(f"{path}: weights file not found")
        return path
    from_env = os.environ.get(ENV_VARIABLE)
    if from_env:
        path = Path(from_env)
        if not path.is_file():
            raise FocusFuseError(f"{path}: weights file not found (from ${ENV_VARIABLE})")
        return path
    for path in shipped_weights_candidates():
        if path.is_file():
            return path
    tried = ", ".join(str(p) for p in shipped_weights_candidates())
    raise FocusFuseError(f"no weights found: pass --weights or set ${ENV_VARIABLE} (looked in {tried})")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def checksum_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def verify_checksum(path: Path) -> str:
    """Compare the file with its ``.sha256`` sidecar (``sha256sum`` format); returns the checksum."""
    sidecar = checksum_path(path)
    if not sidecar.is_file():
        raise FocusFuseError(f"{path}: no checksum file {sidecar.name} beside the weights")
    expected = sidecar.read_text().split()[0].strip().lower()
    actual = sha256_of(path)
    if actual != expected:
        raise FocusFuseError(
            f"{path}: sha256 {actual[:12]}... does not match {sidecar.name} ({expected[:12]}...); "
            "the file is corrupt or was replaced"
        )
    return actual


def save_weights(model: GACN, path: Path, metadata: dict) -> None:
    """Write the state dict with its training record, then the sha256 sidecar."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {name: tensor.detach().cpu() for name, tensor in model.state_dict().items()}
    temporary = path.with_name(path.name + ".tmp")
    metadata = {**metadata, "score_sigma": model.score_sigma}
    torch.save({"state_dict": state, "metadata": metadata}, temporary)
    os.replace(temporary, path)
    checksum_path(path).write_text(f"{sha256_of(path)}  {path.name}\n")


def load_model(path: Path, device: torch.device | str = "cpu") -> GACN:
    """Checked weights -> GACN in eval mode, channels-last, on ``device``."""
    verify_checksum(path)
    return _model_from_checked_file(path, device)


def _model_from_checked_file(path: Path, device: torch.device | str) -> GACN:
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        # Files from before score smoothing existed carry no score_sigma: the paper's network.
        model = GACN(score_sigma=float(payload["metadata"].get("score_sigma", 0.0)))
        model.load_state_dict(payload["state_dict"])
    except Exception as error:  # torch.load raises many types for foreign or damaged files
        raise FocusFuseError(f"{path}: not a focusfuse weights file ({error.__class__.__name__})") from error
    # Channels-last lets the CPU and GPU conv kernels skip layout conversions
    # (bench/speed.py times the whole network).
    return model.to(device, memory_format=torch.channels_last).eval()  # type: ignore[call-overload]  # not in torch's stubs


_loaded: dict[tuple, tuple[GACN, str]] = {}
_loading = threading.Lock()


def shared_model(path: Path, device: torch.device | str = "cpu") -> tuple[GACN, str]:
    """The model from ``path`` on ``device`` and its sha256, loaded once per process.

    A batch worker fuses many stacks: loading and checking the weights for each one
    would cost more than a small stack's fusion. The file's size and mtime are part
    of the key, so replaced weights are loaded (and checked) again. The model is only
    ever run in inference mode, so threads (Dask workers in one process) can share it.
    """
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, str(device))
    with _loading:
        if key not in _loaded:
            sha256 = verify_checksum(path)
            _loaded[key] = (_model_from_checked_file(path, device), sha256)
        return _loaded[key]
