"""Immutable index files: written once, fsynced, and recorded (name, size, CRC-32) by the commit that uses them.
(Files replaced in place go through the project's one atomic write, ``modernretrieval.files.atomic_write``.)

A file that is missing, truncated or altered is reported as IndexCorruptError with its name, never as a failure deep
inside numpy or faiss. Sizes are checked on every open (cheap, keeps memory-mapping lazy); checksums by ``verify``.
"""

from __future__ import annotations

import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import IndexCorruptError

CHUNK = 1 << 22


@dataclass(frozen=True)
class FileEntry:
    name: str
    size: int
    crc32: int

    def to_json(self) -> list:
        return [self.name, self.size, self.crc32]

    @classmethod
    def from_json(cls, value: list) -> "FileEntry":
        return cls(str(value[0]), int(value[1]), int(value[2]))


def _write(path: Path, chunks: list[bytes | memoryview]) -> FileEntry:
    crc, size = 0, 0
    with open(path, "wb") as f:
        for chunk in chunks:
            f.write(chunk)
            crc = zlib.crc32(chunk, crc)
            size += len(chunk)
        f.flush()
        os.fsync(f.fileno())
    return FileEntry(path.name, size, crc)


def write_array(folder: Path, name: str, array: np.ndarray) -> FileEntry:
    """``array`` as a .npy file (loadable with np.load, memory-mappable), fsynced."""
    array = np.ascontiguousarray(array)
    header = _npy_header(array)
    return _write(folder / name, [header, memoryview(array).cast("B")] if array.size else [header])


def write_bytes(folder: Path, name: str, data: bytes | np.ndarray) -> FileEntry:
    return _write(folder / name, [memoryview(np.ascontiguousarray(data)).cast("B") if isinstance(data, np.ndarray) else data])


def _npy_header(array: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, np.lib.format.header_data_from_array_1_0(array))
    return buffer.getvalue()


def check_size(folder: Path, entry: FileEntry) -> Path:
    path = folder / entry.name
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise _missing(path) from None
    if size != entry.size:
        raise IndexCorruptError(f"{path} has {size} bytes, the index recorded {entry.size}: the file was truncated "
                                "or overwritten")
    return path


def _missing(path: Path) -> IndexCorruptError:
    return IndexCorruptError(f"{path} is missing: the index folder is incomplete")


def open_array(folder: Path, entry: FileEntry, mmap: bool = True) -> np.ndarray:
    path = check_size(folder, entry)
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError) as error:
        raise IndexCorruptError(f"{path} is not a readable array ({error})") from None


def open_array_with_fd(folder: Path, entry: FileEntry) -> tuple[np.ndarray, int]:
    """``entry``'s array memory-mapped, and an open read-only descriptor of the same file (the caller closes it).
    The descriptor is opened first: opening the file by name after mapping it would fail with FileNotFoundError if
    a writer collected it in between (a newer commit retired it). This way a file collected before either open is
    IndexCorruptError ("missing"), which a reader racing a writer retries on the newer generation (base.py
    ``_view``), and one collected after both stays readable through the map and the descriptor (a committed
    file's name is never written again)."""
    path = folder / entry.name
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        raise _missing(path) from None
    try:
        return open_array(folder, entry), fd
    except BaseException:
        os.close(fd)
        raise


def verify(folder: Path, entry: FileEntry) -> None:
    """Full read and checksum: catches altered bytes that keep the size."""
    path = check_size(folder, entry)
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            crc = zlib.crc32(chunk, crc)
    if crc != entry.crc32:
        raise IndexCorruptError(f"{path} fails its checksum: the file was altered after it was written")
