"""focusfuse: focus stacking of microscopy z-stacks with GACN and decision calibration.

``fuse_stack`` is the library form of ``focusfuse stack``.
"""

from __future__ import annotations

__version__ = "0.1.0"

from focusfuse.errors import FocusFuseError  # noqa: E402
from focusfuse.pipeline import FusionResult, fuse_stack  # noqa: E402

__all__ = ["FocusFuseError", "FusionResult", "fuse_stack", "__version__"]
