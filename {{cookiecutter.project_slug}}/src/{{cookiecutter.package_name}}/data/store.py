"""Tokens and packed rows on disk, as plain numpy files that are read memory-mapped.

`prepare` streams every tokenized example into a `TokenStore` (two flat int32 files, ids and
labels, appended chunk by chunk), packs from the lengths alone, then writes each split's rows
with a `RowWriter` a block at a time (blocks in parallel), reading just that block's examples back. `load_rows` maps them back as torch tensors: the
operating system reads the rows a batch touches, so a prepared set larger than RAM trains.

A prepared folder holds, per split (train/, val/), int32 `.npy` files:
    input_ids, labels, position_ids   [rows, max_length]
    real_tokens                       [rows]   non-padding tokens per row
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from .errors import DataError
from .packing import COLUMNS


class TokenStore:
    """Append-only flat token arrays: example i is ids[offsets[i] : offsets[i] + lengths[i]]."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._files = {name: (self.folder / f"{name}.bin").open("wb") for name in ("ids", "labels")}
        self._lengths: list[np.ndarray] = []
        self.tokens = 0

    def append(self, ids: np.ndarray, labels: np.ndarray, lengths: np.ndarray) -> None:
        """A chunk of examples: their ids and labels concatenated, and each one's length."""
        self._files["ids"].write(np.ascontiguousarray(ids, dtype=np.int32).tobytes())
        self._files["labels"].write(np.ascontiguousarray(labels, dtype=np.int32).tobytes())
        self._lengths.append(np.asarray(lengths, dtype=np.int32))
        self.tokens += len(ids)

    def close(self) -> tuple[np.ndarray, np.ndarray]:
        """Finish writing; (lengths, offsets) of every example, in the order appended."""
        for file in self._files.values():
            file.close()
        self._files = {}
        lengths = np.concatenate(self._lengths) if self._lengths else np.zeros(0, dtype=np.int32)
        self._lengths = []
        offsets = np.cumsum(lengths, dtype=np.int64) - lengths
        return lengths, offsets

    def remove(self) -> None:
        for name in ("ids", "labels"):
            (self.folder / f"{name}.bin").unlink()
        self.folder.rmdir()

    def read(self, offsets: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Ids and labels of the examples at `offsets` (of `lengths`), one after the other.

        Read with pread, not through a memory map: the examples of a block of rows lie all
        over the file, and a mapping would pull neighbouring pages into this process's memory.
        """
        out = {}
        for name in ("ids", "labels"):
            fd = os.open(self.folder / f"{name}.bin", os.O_RDONLY)
            try:
                parts = [os.pread(fd, 4 * int(n), 4 * int(at)) for at, n in zip(offsets.tolist(), lengths.tolist(), strict=True)]
            finally:
                os.close(fd)
            out[name] = np.frombuffer(b"".join(parts), dtype=np.int32)
        return out["ids"], out["labels"]


class RowWriter:
    """The row files of one split, `rows` rows of `max_length` tokens: laid out (at their full
    size) when made, then written a block of rows at a time, each at its own place, so that
    blocks may be written in any order and by any process."""

    def __init__(self, folder: Path, rows: int, max_length: int):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.row_bytes = {name: 4 if name == "real_tokens" else 4 * max_length for name in COLUMNS}
        self.data_start = {}  # where row 0 starts in each file, after the .npy header
        for name in COLUMNS:
            shape = (rows,) if name == "real_tokens" else (rows, max_length)
            with (self.folder / f"{name}.npy").open("wb") as file:
                np.lib.format.write_array_header_1_0(file, {"descr": "<i4", "fortran_order": False, "shape": shape})
                self.data_start[name] = file.tell()
                file.truncate(file.tell() + rows * self.row_bytes[name])

    def write(self, first_row: int, block: dict[str, np.ndarray]) -> None:
        """Rows first_row.. of each column (COLUMNS), written in place."""
        for name in COLUMNS:
            data = memoryview(np.ascontiguousarray(block[name], dtype="<i4").tobytes())
            at = self.data_start[name] + first_row * self.row_bytes[name]
            fd = os.open(self.folder / f"{name}.npy", os.O_WRONLY)
            try:
                while data:  # a write may be short; the rest goes after it
                    written = os.pwrite(fd, data, at)
                    data, at = data[written:], at + written
            finally:
                os.close(fd)


def load_rows(folder: str | Path) -> dict[str, torch.Tensor]:
    """One split's rows as int32 tensors over memory-mapped files (nothing is read up front).

    Indexing (`rows["input_ids"][batch]`) reads just those rows. The mapping is copy-on-write,
    so a tensor written to in memory never changes the file.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: not found; run `prepare` first")
    rows = {}
    for name in COLUMNS:
        path = folder / f"{name}.npy"
        try:
            rows[name] = torch.from_numpy(np.load(path, mmap_mode="c", allow_pickle=False))
        except (OSError, ValueError) as err:
            raise DataError(f"{path}: cannot be read ({err}); run `prepare` again") from None
    return rows
