"""What importing focusfuse sets in the process environment, and that the user can override it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

PRINT_THP = "import focusfuse, os; print(os.environ['THP_MEM_ALLOC_ENABLE'])"


@pytest.mark.parametrize("preset, expected", [(None, "1"), ("0", "0")])
def test_huge_pages_for_torch_are_asked_for_unless_the_user_said_otherwise(preset, expected):
    env = {key: value for key, value in os.environ.items() if key != "THP_MEM_ALLOC_ENABLE"}
    if preset is not None:
        env["THP_MEM_ALLOC_ENABLE"] = preset
    printed = subprocess.run([sys.executable, "-c", PRINT_THP], env=env, capture_output=True, text=True, check=True)
    assert printed.stdout.strip() == expected
