"""Write files and directories all at once, and say plainly why a write failed.

A directory is built under a temporary name, then renamed in; a file is written to a
temporary name, then renamed over the old one. A crash, a SIGKILL or a full disk half-way
leaves the previous version (or nothing), never a half-written output that a later step
would trust.

A write that fails (a full disk, a quota, a read-only folder: any OSError, also the ones
torch and safetensors report as their own errors) raises `WriteFailed`: one line naming the
folder, the space free there and the space needed. The CLI exits with code 74 on it, which
retry loops and SkyPilot's recovery treat as "do not retry": a rerun would hit the same
wall.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path


class WriteFailed(Exception):
    """An output could not be written (full disk, quota, permissions). Exit code 74."""

    def __init__(self, message: str, folder: Path, free: int | None, needed: int | None):
        super().__init__(message)
        self.folder, self.free, self.needed = folder, free, needed


def human_bytes(n: int | None) -> str:
    if n is None:
        return "an unknown amount"
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} bytes"  # unreachable


def existing_folder(path: str | Path) -> Path:
    """The nearest folder that exists at or above `path` (where free space can be asked)."""
    path = Path(path).absolute()
    while not path.is_dir() and path != path.parent:
        path = path.parent
    return path


def free_bytes(path: str | Path) -> int | None:
    """Bytes free for this user on the file system that holds `path`."""
    try:
        return shutil.disk_usage(existing_folder(path)).free
    except OSError:
        return None


def size_of(path: Path) -> int:
    """Bytes in a file, or in all files under a folder."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else 0


# Libraries that write in C / C++ / Rust report a failed write as their own error type.
_IO_MESSAGES = (
    "no space left", "disk quota", "read-only file system", "os error", "file too large",
    "unexpected pos",  # torch.save's zip writer when a write came up short
    "pytorchstreamwriter failed", "file write failed", "requested and",  # numpy's short write
)


# OSErrors that say the disk (or the quota, or the file system) refuses more data.
OUT_OF_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS)


def is_write_error(err: BaseException) -> bool:
    return isinstance(err, OSError) or any(text in str(err).lower() for text in _IO_MESSAGES)


def _reason(err: BaseException) -> str:
    if isinstance(err, OSError) and err.errno:
        return os.strerror(err.errno)
    text = str(err).lower()
    if "no space left" in text or "os error 28" in text or "unexpected pos" in text or "requested and" in text:
        return os.strerror(errno.ENOSPC)  # a short write: the disk filled up
    if "disk quota" in text:
        return os.strerror(errno.EDQUOT)
    return str(err).splitlines()[0][:200] if str(err) else type(err).__name__


def write_failed(target: str | Path, err: BaseException, needed: int | None, what: str = "",
                 at_least: bool = False) -> WriteFailed:
    """The one-line error for a failed write of `target` (`needed`: bytes it takes, if known;
    `at_least`: only a floor is known, what was written before the failure)."""
    folder = existing_folder(Path(target).parent)
    free = free_bytes(folder)
    need = f"{'more than' if at_least else 'about'} {human_bytes(needed)} needed" if needed else "needed: unknown"
    message = (
        f"cannot write {what or Path(target).name} in {folder}: {_reason(err)} "
        f"({human_bytes(free)} free, {need}); free some space or point the output elsewhere"
    )
    return WriteFailed(message, folder, free, needed)


@contextmanager
def atomic_dir(target: str | Path, needed: int | None = None):
    """`with atomic_dir(out) as tmp:` write into tmp; `out` is replaced only on success.

    A write error inside becomes `WriteFailed` (the previous `out` is kept); `needed` is
    what the whole directory takes, when the caller knows it."""
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    except OSError as err:
        raise write_failed(target, err, needed, f"{target.name}/") from err
    try:
        try:
            yield tmp
            if target.exists():
                shutil.rmtree(target)
            tmp.rename(target)
        except WriteFailed:
            raise
        except Exception as err:
            if not is_write_error(err):
                raise
            written = size_of(tmp)
            shutil.rmtree(tmp, ignore_errors=True)  # the free space reported is what remains
            # Without `needed`, the size at the failure is a floor: more was to come.
            raise write_failed(target, err, needed or written or None, f"{target.name}/", at_least=not needed) from err
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class RawFile:
    """A file written through os.write (every short write or error surfaces as an OSError).

    torch.save reports its writer's errors as a bare RuntimeError; `error` keeps the real one."""

    def __init__(self, path: Path):
        self.path = path
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        self.error: OSError | None = None

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        try:
            while view:
                view = view[os.write(self.fd, view) :]
        except OSError as err:
            self.error = err
            raise
        return len(data)

    def flush(self) -> None:
        pass

    def close(self, sync: bool = True) -> None:
        try:
            if sync and self.error is None:
                os.fsync(self.fd)
        finally:
            os.close(self.fd)


def write_bytes(path: Path, data: bytes, sync: bool = True) -> None:
    """Write a whole file (OSError on any failure, nothing left that looks complete)."""
    raw = RawFile(path)
    try:
        raw.write(data)
    finally:
        raw.close(sync)


def torch_save(obj, path: Path, sync: bool = True) -> None:
    """torch.save through os.write, so that a full disk raises the OSError, not torch's RuntimeError."""
    import torch

    raw = RawFile(path)
    try:
        torch.save(obj, raw)
    except RuntimeError as err:
        if raw.error is not None:
            raise raw.error from err
        raise
    finally:
        raw.close(sync)


def write_text_atomic(path: str | Path, text: str) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    data = text.encode("utf-8")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes(tmp, data, sync=False)
        tmp.replace(path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise write_failed(path, err, len(data)) from err
