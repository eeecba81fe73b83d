"""focusfuse: focus stacking of microscopy z-stacks with GACN and decision calibration.

``fuse_stack`` is the library form of ``focusfuse stack``.
"""

from __future__ import annotations

__version__ = "0.18.0"

import os  # noqa: E402

# Ask PyTorch's CPU allocator for transparent huge pages (read once, at its first
# allocation, so before torch is imported here). Every large activation is a fresh
# mmap; with 4 KiB pages a 1024x1024 stack took 8 million page faults and more kernel
# than user time on a virtual machine (bench/speed.py). THP_MEM_ALLOC_ENABLE=0 opts out.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

from focusfuse.errors import FocusFuseError  # noqa: E402
from focusfuse.fusion.pipeline import FusionResult, fuse_stack  # noqa: E402

__all__ = ["FocusFuseError", "FusionResult", "fuse_stack", "__version__"]
