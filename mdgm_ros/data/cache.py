"""The training cache: where aligned samples and shards live, how big it may grow, and pruning.

Everything is under ``$MDGM_ROS_CACHE`` (default ``~/.cache/mdgm_ros``):

* ``aligned/<key>.npz``: one bag's aligned samples (the in-memory training path, :mod:`.dataset`);
* ``shards/<key>/``: one bag's aligned samples as fixed-size shards with a manifest (:mod:`.shards`).

Entries are keyed by the bag's content hash and every parameter that shapes a sample, so an entry is
never stale, only unused. The cache is bounded by ``$MDGM_ROS_CACHE_MAX_GB`` (default 50): after a
training run writes new entries, the least recently used ones beyond the bound are removed (never an
entry the run itself uses). ``mdgm-ros cache list|prune`` shows and trims it by hand.
"""
from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

DEFAULT_MAX_GB = 50.0
KINDS = ("aligned", "shards")


def cache_root() -> Path:
    return Path(os.environ.get("MDGM_ROS_CACHE", Path.home() / ".cache" / "mdgm_ros"))


def max_bytes() -> int:
    """The bound from ``$MDGM_ROS_CACHE_MAX_GB`` (a bad value is an error naming the variable)."""
    text = os.environ.get("MDGM_ROS_CACHE_MAX_GB", "")
    try:
        gb = float(text) if text.strip() else DEFAULT_MAX_GB
    except ValueError:
        raise ValueError(f"MDGM_ROS_CACHE_MAX_GB={text!r} is not a number of gigabytes") from None
    if gb < 0:
        raise ValueError(f"MDGM_ROS_CACHE_MAX_GB={text!r} must be >= 0")
    return int(gb * 1e9)


@dataclass(frozen=True)
class Entry:
    kind: str                  # 'aligned' or 'shards'
    path: Path
    bytes: int
    used: float                # last use (mtime of the file, or of the manifest), seconds since the epoch
    bag: str                   # the bag it came from, where known

    def to_dict(self) -> dict:
        return {"kind": self.kind, "path": str(self.path), "mb": round(self.bytes / 1e6, 1),
                "last_used": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.used)), "bag": self.bag}


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _shard_entry(folder: Path) -> Entry | None:
    import json

    manifest = folder / "manifest.json"
    if not manifest.is_file():
        return None
    try:
        bag = str(json.loads(manifest.read_text()).get("bag", ""))
    except (OSError, ValueError):
        bag = ""
    return Entry("shards", folder, _size(folder), manifest.stat().st_mtime, bag)


def entries(root: Path | None = None) -> list[Entry]:
    """Every finished cache entry, least recently used first (temporary leftovers are not entries)."""
    root = cache_root() if root is None else Path(root)
    found = []
    for file in sorted((root / "aligned").glob("*.npz")):
        if not file.name.startswith("."):
            found.append(Entry("aligned", file, file.stat().st_size, file.stat().st_mtime, ""))
    for folder in sorted((root / "shards").glob("*")):
        if folder.is_dir() and not folder.name.startswith("."):
            entry = _shard_entry(folder)
            if entry is not None:
                found.append(entry)
    return sorted(found, key=lambda e: e.used)


def leftovers(root: Path | None = None, older_than_s: float = 3600.0) -> list[Path]:
    """Temporary files and folders of writes that died (hidden names), older than ``older_than_s``."""
    root = cache_root() if root is None else Path(root)
    now = time.time()
    return [p for kind in KINDS for p in (root / kind).glob(".*") if now - p.stat().st_mtime > older_than_s]


def touch(path: Path) -> None:
    """Mark an entry as used now (its LRU age)."""
    target = path / "manifest.json" if path.is_dir() else path
    try:
        os.utime(target)
    except OSError:
        pass


def remove(entry: Entry | Path) -> None:
    path = entry.path if isinstance(entry, Entry) else Path(entry)
    if path.is_dir():
        # rename first: a reader never sees a half-deleted shard folder under its key
        hidden = path.with_name(f".{path.name}.deleting-{os.getpid()}")
        os.rename(path, hidden)
        shutil.rmtree(hidden, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def prune(root: Path | None = None, limit_bytes: int | None = None, older_than_days: float | None = None,
          keep: Iterable[Path] = (), dry_run: bool = False, log: Callable[[str], None] = lambda m: None) -> list[Entry]:
    """Remove entries unused for ``older_than_days``, then the least recently used until the rest fit in
    ``limit_bytes``; never those in ``keep``. Returns what was (or, dry run, would be) removed."""
    kept = {Path(p).resolve() for p in keep}
    candidates = [e for e in entries(root) if e.path.resolve() not in kept]
    total = sum(e.bytes for e in entries(root))
    now, removed = time.time(), []
    for entry in candidates:
        stale = older_than_days is not None and now - entry.used > older_than_days * 86400
        too_big = limit_bytes is not None and total > limit_bytes
        if not (stale or too_big):
            continue
        if not dry_run:
            remove(entry)
        total -= entry.bytes
        removed.append(entry)
        log(f"{'would remove' if dry_run else 'removed'} {entry.path} ({entry.bytes / 1e6:.1f} MB)")
    if not dry_run:
        for path in leftovers(root):
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
    return removed


def enforce_bound(keep: Iterable[Path], log: Callable[[str], None], root: Path | None = None) -> None:
    """After a run: the cache back under ``$MDGM_ROS_CACHE_MAX_GB`` (least recently used go first)."""
    removed = prune(root, limit_bytes=max_bytes(), keep=keep)
    if removed:
        log(f"cache bound {max_bytes() / 1e9:.0f} GB ($MDGM_ROS_CACHE_MAX_GB): removed {len(removed)} least "
            f"recently used entries ({sum(e.bytes for e in removed) / 1e6:.0f} MB)")
