"""Every slice decoded once and kept, so that tiles and second passes cost no decoding.

Fusion in tiles reads every slice once per tile, and the flat-region fill and the
pyramid composite read slices again; decoding a PNG or JPEG each time would cost more
than the network. ``DecodedStack`` decodes the slices in a small thread pool (PNG,
JPEG and TIFF decoders release the GIL) while the caller already works on the first
ones, and keeps them as read (8/16-bit, as the file had them): in RAM when the memory
plan allows it, else in a temporary file in $TMPDIR. That file is unlinked as soon as
it is created, so nothing is left on disk whatever ends the process (Ctrl-C, SIGTERM,
SIGKILL). It is written and read with pwrite/pread, not mapped: the pages of a mapped
file count in the process's resident memory as they are touched, and a 20-megapixel
stack's 300 MB of mapped slices took plankton5's fusion to 1655 MiB, over a plan
that had put them on disk to stay near 1.3 GiB (docs/benchmarks.md).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

DECODE_WORKERS = 4  # decoders in flight; more only queue behind each other on a few cores
RowReader = Callable[[int, slice], np.ndarray]  # (slice number, rows) -> those rows of the slice


class DecodedStack:
    """Slices ``0..N-1`` of ``read``, each decoded once.

    Args:
        read: slice number -> image ``(H, W)`` or ``(H, W, C)``; every slice has
            ``first``'s shape and dtype (``StackSource.read`` checks that).
        n_slices: N.
        first: slice 0, already decoded.
        in_memory: keep the slices in RAM; False keeps them in a temporary file, and
            every ``read`` of one is a fresh array.
        workers: decoding threads.
    """

    def __init__(
        self,
        read: Callable[[int], np.ndarray],
        n_slices: int,
        first: np.ndarray,
        *,
        in_memory: bool,
        workers: int = DECODE_WORKERS,
    ) -> None:
        self.n_slices = n_slices
        self.shape, self.dtype = first.shape, first.dtype
        self.in_memory = in_memory
        self._file = None
        self._slices: list[np.ndarray | None] = [None] * n_slices
        if not in_memory:
            self._file = tempfile.TemporaryFile(prefix="focusfuse-", dir=os.environ.get("TMPDIR"))
        self._slice_bytes = int(np.prod(self.shape)) * self.dtype.itemsize
        self._store(0, first)
        self._pool = ThreadPoolExecutor(max_workers=max(1, min(workers, n_slices - 1)), thread_name_prefix="decode")
        self._pending: dict[int, Future] = {j: self._pool.submit(self._decode, read, j) for j in range(1, n_slices)}

    @property
    def nbytes(self) -> int:
        """Bytes the whole stack takes, in RAM or on disk."""
        return self.n_slices * self._slice_bytes

    def _store(self, index: int, image: np.ndarray) -> None:
        if self._file is None:
            self._slices[index] = image
            return
        data = np.ascontiguousarray(image, dtype=self.dtype).data.cast("B")
        offset, written = index * self._slice_bytes, 0
        while written < len(data):  # a regular file takes it all at once; loop in case it does not
            written += os.pwrite(self._file.fileno(), data[written:], offset + written)

    def _load_rows(self, index: int, rows: slice) -> np.ndarray:
        """Rows ``rows`` of slice ``index`` from the file: one contiguous range, read alone."""
        top, bottom, _ = rows.indices(self.shape[0])
        bottom = max(top, bottom)
        row_bytes = self._slice_bytes // self.shape[0]
        part = np.empty((bottom - top, *self.shape[1:]), self.dtype)
        if part.size == 0:
            return part
        buffer = part.data.cast("B")
        offset, done = index * self._slice_bytes + top * row_bytes, 0
        while done < len(buffer):
            count = os.preadv(self._file.fileno(), [buffer[done:]], offset + done)  # type: ignore[union-attr]
            if count == 0:
                raise OSError(f"temporary slice file ended at slice {index}")
            done += count
        return part

    def _decode(self, read: Callable[[int], np.ndarray], index: int) -> None:
        self._store(index, read(index))

    def _wait(self, index: int) -> None:
        """Until slice ``index`` is decoded and stored (a decoding error is raised here)."""
        pending = self._pending.pop(index, None)
        if pending is not None:
            pending.result()

    def read(self, index: int) -> np.ndarray:
        """Slice ``index`` (waits for its decoding; a decoding error is raised here)."""
        self._wait(index)
        if self._file is not None:
            return self._load_rows(index, slice(None))
        image = self._slices[index]
        assert image is not None
        return image

    def take(self, index: int) -> np.ndarray:
        """Slice ``index``, read for the last time: a store in RAM lets go of it, so that a
        stack copied slice by slice into another store (warped) is not held twice."""
        image = self.read(index)
        if self._file is None:
            self._slices[index] = None
        return image

    def read_rows(self, index: int, rows: slice) -> np.ndarray:
        """Rows ``rows`` (step 1) of slice ``index``: from the file only those rows are read, so a
        tile or strip of a large slice costs no whole-slice array; in RAM, a view."""
        self._wait(index)
        if self._file is not None:
            return self._load_rows(index, rows)
        image = self._slices[index]
        assert image is not None
        return image[rows]

    def read_all(self) -> None:
        """Wait until every slice is decoded (raises the first decoding error, in slice order)."""
        for index in sorted(self._pending):
            self.read(index)

    def close(self) -> None:
        """Stop decoding and free the slices (the temporary file goes with its last handle)."""
        for pending in self._pending.values():
            pending.cancel()
        self._pool.shutdown(wait=True)
        self._pending.clear()
        self._slices = [None] * self.n_slices
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> DecodedStack:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
