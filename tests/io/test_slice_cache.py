"""The decoded-slice store: every slice decoded once, in RAM or in an unmapped temporary file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from focusfuse.io.slice_cache import DecodedStack


def slices(dtype: str, shape: tuple[int, ...]) -> list[np.ndarray]:
    rng = np.random.default_rng(4)
    top = np.iinfo(dtype).max
    return [rng.integers(0, top, size=shape, endpoint=True).astype(dtype) for _ in range(5)]


@pytest.mark.parametrize(("dtype", "shape"), [("uint8", (37, 53, 3)), ("uint16", (64, 48))])
def test_slices_on_file_read_back_exactly_and_are_never_mapped(dtype, shape):
    """Regression: a memory-mapped store put plankton5's 300 MB of slices back into the resident memory."""
    stack = slices(dtype, shape)
    with DecodedStack(lambda j: stack[j], len(stack), stack[0], in_memory=False) as store:
        for j in reversed(range(len(stack))):
            np.testing.assert_array_equal(store.read(j), stack[j])
        maps = Path("/proc/self/maps").read_text() if Path("/proc/self/maps").exists() else ""
        assert "focusfuse-" not in maps  # the temporary file is read and written, not mapped
        first = store.read(0)
        first[...] = 0  # a read is the caller's own copy
        np.testing.assert_array_equal(store.read(0), stack[0])


def test_a_decoding_error_is_raised_by_the_read_of_that_slice():
    stack = slices("uint8", (16, 16))

    def read(j: int) -> np.ndarray:
        if j == 3:
            raise ValueError("z4.png: damaged")
        return stack[j]

    with DecodedStack(read, len(stack), stack[0], in_memory=False) as store:
        np.testing.assert_array_equal(store.read(2), stack[2])
        with pytest.raises(ValueError, match="z4.png: damaged"):
            store.read(3)


@pytest.mark.parametrize("in_memory", [True, False])
@pytest.mark.parametrize("rows", [slice(0, 37), slice(5, 6), slice(12, 30), slice(30, 99), slice(20, 20)])
def test_rows_of_a_slice_are_those_of_the_whole_slice(in_memory, rows):
    """Tiles and composite strips read only their rows; they must be the slice's own."""
    stack = slices("uint16", (37, 53, 3))
    with DecodedStack(lambda j: stack[j], len(stack), stack[0], in_memory=in_memory) as store:
        for j in (4, 0, 2):
            np.testing.assert_array_equal(store.read_rows(j, rows), stack[j][rows])


def test_a_slice_taken_from_a_store_in_ram_is_no_longer_held_by_it():
    """Warping an aligned stack into a new store takes each slice from the old one: held twice, a
    deep stack's decoded slices would double the peak memory."""
    import gc
    import weakref

    stack = [np.full((8, 8), j, np.uint8) for j in range(4)]
    with DecodedStack(lambda j: stack[j].copy(), len(stack), stack[0].copy(), in_memory=True) as store:
        store.read_all()
        taken = store.take(2)
        np.testing.assert_array_equal(taken, stack[2])
        alive = weakref.ref(taken)
        del taken
        gc.collect()
        assert alive() is None  # the store kept no reference to it
        np.testing.assert_array_equal(store.read(3), stack[3])  # the others are still there
