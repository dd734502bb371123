"""Bags -> aligned samples -> fixed-size shards on disk, for training on more data than memory holds.

Each bag is aligned with the live node's own conversions and aligner (:func:`.dataset.align_bag`, through
a collector that writes every ``shard_size`` samples out instead of keeping them), into one folder
under ``$MDGM_ROS_CACHE/shards/<key>/``::

    manifest.json         bag path and content hash, the parameters that shape a sample, modality
                          shapes and dtypes, the shard list, the bag's own fault labels, rejects
    index.npz             per sample: stamp (ns), presence mask, task phase
    00000/<modality>.npy  shard_size samples of each modality (images uint8, the rest float32)

Plain ``.npy`` per modality per shard: memory-mapped reads of just the rows a batch needs, no extra
dependency (WebDataset's tar streams cannot read a row without reading its neighbours; zarr would add a
dependency for the same layout). The key is the bag's content hash plus everything that shapes a
sample, so an entry is reused by every later run and never stale. The folder is written next to its
final name and swapped in atomically (:func:`~mdgm_ros.core.atomic.replace_dir`). Fault labels from a
sidecar file are not part of the bag: they are read afresh when the shards are opened. Several bags are
aligned at once in worker processes.
"""
from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import tempfile
import time
from collections import OrderedDict
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..core import ModalitySpec
from ..core.engine.atomic import fsync_path, recover_dir, replace_dir
from ..streams.params import FusionParams
from . import bags
from .cache import cache_root, touch
from .dataset import SampleCollector, align_bag, cache_key
from .labels import DEFAULT_LABEL_TOPIC, FaultLabel, find_sidecar, mark_faults, read_sidecar

SHARD_VERSION = 1
DEFAULT_SHARD_SIZE = 1024
MANIFEST = "manifest.json"


def shards_dir() -> Path:
    return cache_root() / "shards"


def shard_key(bag_hash: str, params: FusionParams, specs: Sequence[ModalitySpec], settle_s: float,
              label_topic: str, shard_size: int) -> str:
    text = f"{SHARD_VERSION}:{shard_size}:{cache_key(bag_hash, params, list(specs), settle_s, label_topic)}"
    return hashlib.sha256(text.encode()).hexdigest()[:32]


class _ShardingCollector(SampleCollector):
    """The dataset collector that writes every ``shard_size`` aligned samples to disk and forgets them."""

    def __init__(self, folder: Path, shard_size: int, *args: Any):
        super().__init__(*args)
        self.folder, self.shard_size, self.shard_rows = folder, shard_size, []

    def _take(self, stamp: int, anchor, keep_empty: bool = False) -> None:
        super()._take(stamp, anchor, keep_empty)
        if len(self.arrays[self.names[0]]) >= self.shard_size:
            self.flush()

    def flush(self) -> None:
        rows = len(self.arrays[self.names[0]])
        if not rows:
            return
        shard = self.folder / f"{len(self.shard_rows):05d}"
        shard.mkdir()
        for name in self.names:
            np.save(shard / f"{name}.npy", np.stack(self.arrays[name]))
            self.arrays[name].clear()
        self.shard_rows.append(rows)


def build_bag_shards(bag: str | Path, params: FusionParams, specs: Sequence[ModalitySpec], settle_s: float,
                     label_topic: str, max_corrupt: float, shard_size: int, root: Path,
                     bag_hash: str = "", damage: bags.DamageHook | None = None) -> dict[str, Any]:
    """Align one bag into ``root/<key>/`` (atomically); returns its manifest. Runs in a worker process;
    ``bag_hash``: its content hash where the caller has it (a worker need not read the bag twice);
    ``damage``: where a damaged bag's :class:`~.bags.BagDamage` goes."""
    bag = Path(bag)
    bag_hash = bag_hash or bags.content_hash(bag)
    target = root / shard_key(bag_hash, params, specs, settle_s, label_topic, shard_size)
    root.mkdir(parents=True, exist_ok=True)
    recover_dir(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=root))
    try:
        started = time.perf_counter()
        collector = _ShardingCollector(tmp, shard_size, params, list(specs), None, label_topic)
        data = align_bag(bag, params, list(specs), 0, settle_s, label_topic=label_topic, max_corrupt=max_corrupt,
                         collector=collector, damage=damage)
        collector.flush()
        sidecar = _sidecar_labels(bag)
        own_labels = [label for label in data.labels if label not in sidecar]
        np.savez(tmp / "index.npz", stamps=data.stamps, mask=data.mask, phase=data.phase.astype(str))
        manifest = {"version": SHARD_VERSION, "bag": str(bag.absolute()), "bag_hash": bag_hash,
                    "shaping": {"settle_s": settle_s, "label_topic": label_topic, "shard_size": shard_size,
                                "anchor": params.anchor, "output_rate": params.output_rate},
                    "names": collector.names, "count": len(data), "shard_rows": collector.shard_rows,
                    "modalities": {n: {"shape": list(collector.streams[n].spec.shape),
                                       "dtype": "uint8" if collector.streams[n].spec.kind == "image" else "float32"}
                                   for n in collector.names},
                    "labels": [json.loads(label.to_json()) for label in own_labels], "rejects": data.rejects,
                    "align_s": round(time.perf_counter() - started, 3)}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
        for file in tmp.rglob("*"):
            if file.is_file():
                fsync_path(file)
        replace_dir(tmp, target)
    except BaseException:
        import shutil
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def _sidecar_labels(bag: Path) -> list[FaultLabel]:
    sidecar = find_sidecar(bag)
    return read_sidecar(sidecar, bags.start_ns(bag)) if sidecar else []


class BagShards:
    """One bag's shards, opened: the small per-sample arrays in memory, the modality rows on disk."""

    def __init__(self, folder: Path, bag: str | Path, settle_s: float, bag_index: int):
        self.folder = Path(folder)
        self.manifest = json.loads((self.folder / MANIFEST).read_text())
        with np.load(self.folder / "index.npz", allow_pickle=False) as index:
            self.stamps, self.mask, self.phase = index["stamps"], index["mask"], index["phase"]
        self.names: list[str] = list(self.manifest["names"])
        self.labels = [FaultLabel(**label) for label in self.manifest["labels"]] + _sidecar_labels(Path(bag))
        self.fault, self.near_fault = mark_faults(self.stamps, self.labels, settle_s)
        self.bag_index = bag_index
        self.shard_size = int(self.manifest["shaping"]["shard_size"])
        self.shard_rows = [int(n) for n in self.manifest["shard_rows"]]
        if sum(self.shard_rows) != len(self.stamps):
            raise ValueError(f"{self.folder}: the shards hold {sum(self.shard_rows)} rows, "
                             f"the index {len(self.stamps)}")

    def __len__(self) -> int:
        return len(self.stamps)

    def shard_path(self, shard: int, name: str) -> Path:
        return self.folder / f"{shard:05d}" / f"{name}.npy"


class RowReader:
    """Rows of many bags' shards by (bag, row), through a small LRU of memory-mapped shard files, so the
    resident memory is a few shards whatever the data's size. One per process (worker)."""

    def __init__(self, bag_shards: Sequence[BagShards], open_shards: int = 4):
        self.bags = list(bag_shards)
        self.open_shards = open_shards
        self._maps: OrderedDict[tuple[int, int, str], np.ndarray] = OrderedDict()

    def __getstate__(self) -> dict[str, Any]:        # a worker opens its own maps
        return {**self.__dict__, "_maps": OrderedDict()}

    def _map(self, bag: int, shard: int, name: str) -> np.ndarray:
        key = (bag, shard, name)
        array = self._maps.pop(key, None)
        if array is None:
            array = np.load(self.bags[bag].shard_path(shard, name), mmap_mode="r")
        self._maps[key] = array
        while len(self._maps) > self.open_shards * len(self.bags[bag].names):
            self._maps.popitem(last=False)
        return array

    def read(self, bag_of_row: np.ndarray, row: np.ndarray) -> dict[str, np.ndarray]:
        """``{modality: (n, *shape)}`` for the given (bag, row-in-bag) pairs, in their order."""
        names = self.bags[int(bag_of_row[0])].names if len(row) else []
        out: dict[str, np.ndarray] = {}
        for name in names:
            first = self._map(int(bag_of_row[0]), int(row[0]) // self.bags[int(bag_of_row[0])].shard_size, name)
            out[name] = np.empty((len(row), *first.shape[1:]), first.dtype)
        for b in np.unique(bag_of_row):
            take = np.flatnonzero(bag_of_row == b)
            size = self.bags[int(b)].shard_size
            shard_of = row[take] // size
            for shard in np.unique(shard_of):
                pick = take[shard_of == shard]
                local = row[pick] - shard * size
                for name in names:
                    out[name][pick] = self._map(int(b), int(shard), name)[local]
        return out


def _build_job(args: tuple) -> tuple[str, dict[str, Any] | None, str]:
    """Pool entry point: (bag, manifest or None, error text); the manifest carries the bag's damage, if any,
    to be reported by the caller's process."""
    bag, found = args[0], []
    try:
        return bag, {**build_bag_shards(*args, damage=found.append), "damage": found}, ""
    except (bags.BagError, OSError, ValueError) as err:
        return bag, None, f"{type(err).__name__}: {err}" if not isinstance(err, bags.BagError) else str(err)


def ensure_shards(paths: Sequence[str | Path], params: FusionParams, specs: Sequence[ModalitySpec],
                  settle_s: float = 0.5, label_topic: str = DEFAULT_LABEL_TOPIC,
                  max_corrupt: float = bags.MAX_CORRUPT, shard_size: int = DEFAULT_SHARD_SIZE, workers: int = 0,
                  root: Path | None = None, log: Callable[[str], None] = print) -> list[BagShards]:
    """Every bag's shards, built where missing (``workers`` processes at once; 0: one per core) and
    reused where present; opened in the order of ``paths``."""
    if shard_size < 1:
        raise ValueError(f"data.shard_size must be >= 1, got {shard_size}")
    root = shards_dir() if root is None else Path(root)
    hashes = [bags.content_hash(p) for p in paths]
    folders = [root / shard_key(h, params, specs, settle_s, label_topic, shard_size) for h in hashes]
    missing = {str(p): h for p, h, folder in zip(paths, hashes, folders) if not (folder / MANIFEST).is_file()}
    if missing:
        _build(missing, (params, list(specs), settle_s, label_topic, max_corrupt, shard_size, root), workers, log)
    opened = []
    for index, (path, folder) in enumerate(zip(paths, folders)):
        touch(folder)
        opened.append(BagShards(folder, path, settle_s, index))
        if str(path) not in missing:
            log(f"{path}: {len(opened[-1])} aligned samples from the shard cache ({folder.name})")
    return opened


def _build(missing: dict[str, str], shared: tuple, workers: int, log: Callable[[str], None]) -> None:
    """Build the shards of ``missing`` (bag -> content hash), ``workers`` bags at once."""
    workers = min(len(missing), workers or os.cpu_count() or 1)
    started = time.perf_counter()
    jobs = [(bag, *shared, bag_hash) for bag, bag_hash in missing.items()]
    if workers == 1:
        results = [_build_job(job) for job in jobs]
    else:
        # spawn: a forked child would inherit torch's thread pools (and any ROS context) of the caller
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                 initializer=_quiet_worker) as pool:
            results = list(pool.map(_build_job, jobs))
    errors = [f"{bag}: {error}" for bag, _, error in results if error]
    if errors:
        raise bags.BagError("; ".join(errors))
    for _, manifest, _ in results:
        for damage in manifest.pop("damage", ()):
            bags.report_damage(damage)
    count = sum(manifest["count"] for _, manifest, _ in results)
    seconds = time.perf_counter() - started
    for bag, manifest, _ in results:
        log(f"{bag}: {manifest['count']} aligned samples into {len(manifest['shard_rows'])} shards, "
            f"{len(manifest['labels'])} fault labels"
            + (f", rejected {manifest['rejects']}" if manifest["rejects"] else ""))
    log(f"sharded {len(missing)} bags with {workers} processes: {count} samples in {seconds:.1f} s "
        f"({count / max(seconds, 1e-9):.0f} samples/s)")


def _quiet_worker() -> None:
    import warnings

    import torch

    torch.set_num_threads(1)
    warnings.simplefilter("ignore", bags.BagDamageWarning)     # the job returns its damage to the caller
