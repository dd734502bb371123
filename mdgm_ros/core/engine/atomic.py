"""Atomic replacement of a folder, and the file modes of what we publish.

``replace_dir(tmp, target)`` swaps a finished folder into place so that, whatever instant the process
dies, ``target`` holds either the old or the new folder: on Linux with ``renameat2(RENAME_EXCHANGE)``
(kernel 3.15+, glibc 2.28+) the two are exchanged in one step; elsewhere the old folder is moved aside
first and :func:`recover_dir` (called before the next write of the target) puts it back if the
process died between the two renames. Leftover temporary siblings are removed there too.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def publish_modes(folder: Path) -> None:
    """Folders 0777 and files 0666, less the umask (0755 / 0644 usually): readable by a node that runs
    as another user. ``mkdtemp``/``mkstemp`` create 0700 / 0600."""
    umask = current_umask()
    for path in [folder, *folder.rglob("*")]:
        if not path.is_symlink():
            os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask)


def _libc_exchange():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return libc.renameat2
    except (OSError, AttributeError):
        return None


_renameat2 = _libc_exchange()


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two existing paths; False where the platform cannot."""
    if _renameat2 is None:
        return False
    result = _renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if result == 0:
        return True
    err = ctypes.get_errno()
    if err in (22, 38, 95):         # EINVAL, ENOSYS, EOPNOTSUPP: not on this kernel or file system
        return False
    raise OSError(err, os.strerror(err), str(b))


def _siblings(target: Path, kind: str) -> list[Path]:
    return sorted(target.parent.glob(f".{target.name}.{kind}-*"))


def recover_dir(target: Path) -> None:
    """After a crash: restore a moved-aside old folder if ``target`` is missing; drop temporaries."""
    target = Path(target)
    if not target.parent.is_dir():
        return
    for old in _siblings(target, "old"):
        inner = old / "bundle"
        if not target.exists() and inner.is_dir():
            os.rename(inner, target)
        shutil.rmtree(old, ignore_errors=True)
    for tmp in _siblings(target, "tmp"):
        shutil.rmtree(tmp, ignore_errors=True)


def fsync_path(path: Path) -> None:
    """fsync a file or a folder (its entries) by path."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_dir(tmp: Path, target: Path) -> None:
    """Move the finished folder ``tmp`` (a sibling of ``target``) into place."""
    if not target.exists():
        os.rename(tmp, target)
    elif _exchange(tmp, target):
        shutil.rmtree(tmp, ignore_errors=True)          # now holds the old folder
    else:
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        os.rename(target, old / "bundle")
        os.rename(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    fsync_path(target.parent)


def write_atomically(path: Path | str, write: Callable[[str], None], publish: bool = True) -> Path:
    """Replace the file ``path`` whole: ``write(tmp)`` fills a temporary sibling (by its name), which is
    flushed to disk and renamed over ``path``, then the folder entry is flushed; whenever the process
    dies, ``path`` holds its old content or the new one. The parent folder is created if needed and the
    temporary file removed if anything fails. ``publish``: mode 0666 less the umask (``mkstemp`` makes
    0600), so that a node running as another user can read it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        fsync_path(Path(tmp))
        if publish:
            os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_path(path.parent)
    return path


def write_text_atomically(path: Path | str, text: str, encoding: str = "utf-8") -> Path:
    """``text`` as the whole content of ``path``, replaced atomically (:func:`write_atomically`)."""
    return write_atomically(path, lambda tmp: Path(tmp).write_text(text, encoding=encoding))
