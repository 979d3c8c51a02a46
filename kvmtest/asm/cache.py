"""Bounded caches of assembled guests: an LRU in memory and a size-capped directory on disk.

Assembling a guest costs tens of milliseconds (Keystone, then every statement decoded and
compared with its source), and the same guests come back in every xdist worker and every run.
Both caches are bounded, so that a long run of distinct guests keeps memory and disk flat:

- KVMTEST_ASM_CACHE_ENTRIES (default 512): assembled guests kept in memory by each process,
  the least recently used dropped first; 0 keeps none.
- KVMTEST_ASM_CACHE_MB (default 64): MiB the files of the disk cache may take (allocated
  size). When a process has written an eighth of that since it last looked, it lists the
  directory and, if over the cap, removes the least recently used files (a hit touches its
  files' mtime) down to three quarters of it. Between two looks each process may add an
  eighth of the cap. 0 turns the disk cache off.
- KVMTEST_CACHE_DIR: where the disk cache lives (default ~/.cache/kvmtest/asm); an empty
  value turns it off.

A bad value is one BadArgumentError naming the variable, at the next assembly. On disk a
guest is one small file `k-<key>.json` holding its sections, except that a large one (the
exception handlers every guest of a mode shares) is a file `s-<digest>.json` of its own that
the guest's file names: stored once, and loaded into memory once (interned by digest). Files
are written whole and renamed into place, so no reader sees half of one; several processes
(xdist workers) may prune at once: a file another one removed is a miss, never an error. Disk
trouble (full, read-only) only costs the cache.
"""

import errno
import hashlib
import json
import os
import re
import tempfile
import threading
import time
from collections import OrderedDict
from pathlib import Path

from ..errors import BadArgumentError
from .source import Assembled

ASM_VERSION = "7"  # bump when preprocessing or the file format changes, to invalidate cached results
ENTRIES_VAR, DEFAULT_ENTRIES = "KVMTEST_ASM_CACHE_ENTRIES", 512
DISK_MB_VAR, DEFAULT_DISK_MB = "KVMTEST_ASM_CACHE_MB", 64
DIR_VAR = "KVMTEST_CACHE_DIR"
SECTIONS_INTERNED = 64    # distinct sections kept by digest (handler sections and recent guests)
SHARED_SECTION_BYTES = 2048  # sections this large (the handlers) get a file of their own, stored once
TMP_GRACE_S = 600         # a half-written file younger than this may be another process's
_REFUSED = {errno.EROFS, errno.EACCES, errno.EPERM}  # the file system will not let this process write
_DIGEST = re.compile(r"[0-9a-f]{40}")
_OURS = re.compile(r"(?:[ks]-)?[0-9a-f]{32,64}\.json|\.tmp-.*")  # never remove anything else


class Lru:
    """A mapping of at most `maxsize` entries that drops the least recently used one first;
    safe to share between threads. maxsize 0 keeps nothing."""

    def __init__(self, maxsize: int):
        self.maxsize = maxsize
        self._data: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key):
        """The value for `key` (now the most recently used), or None."""
        with self._lock:
            value = self._data.get(key)
            if value is not None:
                self._data.move_to_end(key)
            return value

    def put(self, key, value) -> None:
        """Store `value` as the most recently used entry, dropping the oldest beyond maxsize."""
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            self._trim()

    def resize(self, maxsize: int) -> None:
        """Change the bound, dropping the oldest entries beyond it."""
        with self._lock:
            self.maxsize = maxsize
            self._trim()

    def _trim(self) -> None:
        while len(self._data) > self.maxsize:
            self._data.popitem(last=False)

    def keys(self) -> list:
        """The keys, least recently used first."""
        with self._lock:
            return list(self._data)

    def clear(self) -> None:
        """Drop every entry."""
        with self._lock:
            self._data.clear()

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key) -> bool:
        return key in self._data


GUESTS = Lru(DEFAULT_ENTRIES)      # key -> tuple of Assembled, one per section
_SECTIONS = Lru(SECTIONS_INTERNED)  # digest -> Assembled, so equal sections share one object


def entries_limit() -> int:
    """KVMTEST_ASM_CACHE_ENTRIES as a number of guests (default 512); BadArgumentError naming
    the variable unless it is a whole number, 0 or more."""
    raw = os.environ.get(ENTRIES_VAR)
    if raw is None:
        return DEFAULT_ENTRIES
    if not re.fullmatch(r"\s*\d{1,9}\s*", raw):
        raise BadArgumentError(f"{ENTRIES_VAR}={raw!r}: expected a whole number of assembled guests to keep in "
                               "memory, 0 to 999999999 (0 keeps none)")
    return int(raw)


def disk_limit() -> int:
    """KVMTEST_ASM_CACHE_MB as bytes (default 64 MiB; 0: no disk cache); BadArgumentError naming
    the variable unless it is a number of MiB, 0 or more (decimals allowed)."""
    raw = os.environ.get(DISK_MB_VAR)
    if raw is None:
        return DEFAULT_DISK_MB << 20
    if not re.fullmatch(r"\s*(\d{1,7}(\.\d*)?|\.\d+)\s*", raw):
        raise BadArgumentError(f"{DISK_MB_VAR}={raw!r}: expected the disk cache's size in MiB, a number from 0 "
                               "to 9999999 such as 64 or 0.5 (0 turns the disk cache off)")
    return int(float(raw) * (1 << 20))


def cache_dir() -> Path | None:
    """KVMTEST_CACHE_DIR, else ~/.cache/kvmtest/asm; None (no disk cache) if set to ''."""
    env = os.environ.get(DIR_VAR)
    if env == "":
        return None
    return Path(env) if env else Path.home() / ".cache" / "kvmtest" / "asm"


def key(sections, symbols: dict[str, int]) -> str:
    """The cache key of assembling `sections` (kvmtest.asm.source.Section) with `symbols`:
    a SHA-256 hex digest over each section's digest (its name, base, code size and statements'
    text: Section.digest, computed once per section), the symbols, kvmtest's assembler version
    and Keystone's."""
    import keystone

    payload = json.dumps({
        "v": ASM_VERSION, "ks": getattr(keystone, "__version__", "?"),
        "symbols": sorted(symbols.items()),
        "sections": [s.digest for s in sections],
    })
    return hashlib.sha256(payload.encode()).hexdigest()


def lookup(cache_key: str) -> list[Assembled] | None:
    """The sections cached under `cache_key`, from memory or else from disk, or None. Reads the
    settings first: BadArgumentError for a bad KVMTEST_ASM_CACHE_ENTRIES or _MB."""
    GUESTS.resize(entries_limit())
    hit = GUESTS.get(cache_key)
    if hit is not None:
        return list(hit)
    disk = disk_cache()
    loaded = disk.load(cache_key) if disk else None
    if loaded is not None:
        GUESTS.put(cache_key, tuple(loaded))
    return loaded


def remember(cache_key: str, result: list[Assembled]) -> None:
    """Keep `result` under `cache_key` in memory and on disk (each as its settings allow)."""
    GUESTS.put(cache_key, tuple(result))
    disk = disk_cache()
    if disk:
        disk.store(cache_key, result)


def clear() -> None:
    """Forget every guest and section kept in memory (the disk cache stays)."""
    GUESTS.clear()
    _SECTIONS.clear()


def _from_json(a: dict) -> Assembled:
    return Assembled(a["name"], a["base"], a["bits"], bytes.fromhex(a["code"]), dict(a["labels"]), dict(a["equs"]))


def file_size(st: os.stat_result) -> int:
    """What a cache file takes on disk: its allocated blocks, at least its length."""
    return max(st.st_size, getattr(st, "st_blocks", 0) * 512)


class DiskCache:
    """The cache files in `directory`, at most about `limit` bytes of them (see the module)."""

    def __init__(self, directory: Path, limit: int):
        self.directory = Path(directory)
        self.limit = limit
        self.written: int | None = None  # bytes written since this process last listed the directory; None: never
        # Set when the file system refuses us (a read-only root inside `kvmtest run --kernel`'s VM, a
        # directory of another user): this process then stops trying, instead of paying a refused
        # system call (over 9p, milliseconds) for every guest it loads or assembles. Reading goes on.
        self.no_touch = False
        self.no_write = False

    def load(self, cache_key: str) -> list[Assembled] | None:
        """The sections stored under `cache_key`, or None: missing, pruned meanwhile or unreadable."""
        try:
            parts = json.loads((self.directory / f"k-{cache_key}.json").read_text())
            result = [self._section(part) for part in parts]
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None
        self._touch(self.directory / f"k-{cache_key}.json")
        for part in parts:
            if isinstance(part, str):
                self._touch(self.directory / f"s-{part}.json")
        return result

    def _section(self, part) -> Assembled:
        """A section from its stored form: inline (a dict), or a digest naming its file."""
        if isinstance(part, dict):
            return _from_json(part)
        if not isinstance(part, str) or not _DIGEST.fullmatch(part):
            raise ValueError(f"not a section digest: {part!r:.80}")
        interned = _SECTIONS.get(part)
        if interned is None:
            interned = _from_json(json.loads((self.directory / f"s-{part}.json").read_text()))
            _SECTIONS.put(part, interned)
        return interned

    def store(self, cache_key: str, result: list[Assembled]) -> None:
        """Write `result` under `cache_key`, small sections inline, large ones (the shared
        handlers) in a file of their own that is only touched when it is there already; then
        prune if this process has written an eighth of the cap since it last looked. Nothing
        once the file system has refused a write (no_write)."""
        if self.no_write:
            return
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            parts: list = []
            for a in result:
                obj = {"name": a.name, "base": a.base, "bits": a.bits, "code": a.code.hex(), "labels": a.labels,
                       "equs": a.equs}
                text = json.dumps(obj, sort_keys=True, separators=(",", ":"))
                if len(text) < SHARED_SECTION_BYTES:
                    parts.append(obj)
                    continue
                digest = hashlib.sha256(text.encode()).hexdigest()[:40]
                _SECTIONS.put(digest, a)
                path = self.directory / f"s-{digest}.json"
                if not (self._touch(path) if not self.no_touch else path.exists()):
                    self._write(path, text)
                parts.append(digest)
            self._write(self.directory / f"k-{cache_key}.json", json.dumps(parts, separators=(",", ":")))
        except OSError as e:
            self.no_write |= e.errno in _REFUSED
            return
        if self.written is None or self.written >= self.limit // 8:
            self.prune()

    def _write(self, path: Path, text: str) -> None:
        # Written whole, then renamed: a concurrent reader sees the old file or the new one.
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".tmp-")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(text)
                block = os.fstat(f.fileno()).st_blksize or 4096
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        self.written = (self.written or 0) + -(-len(text) // block) * block  # whole blocks, as usage() counts

    def _touch(self, path: Path) -> bool:
        """Mark a file as used now (its mtime orders pruning); False if it is not there or could
        not be touched. After a refusal (no_touch) it does not try again and says False."""
        if self.no_touch:
            return False
        try:
            os.utime(path)
            return True
        except OSError as e:
            self.no_touch |= e.errno in _REFUSED
            return False

    def usage(self) -> list[tuple[float, int, str]]:
        """(mtime, size on disk, path) of every cache file, oldest first; files that vanish while
        they are listed (another process pruning) are left out."""
        now, files = time.time(), []
        try:
            with os.scandir(self.directory) as entries:
                for entry in entries:
                    if not _OURS.fullmatch(entry.name):
                        continue
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    if entry.name.startswith(".tmp-") and now - st.st_mtime < TMP_GRACE_S:
                        continue  # being written by another process
                    files.append((st.st_mtime, file_size(st), entry.path))
        except OSError:
            return []
        return sorted(files)

    def prune(self) -> int:
        """Remove the least recently used files while the total is over three quarters of the
        cap, if it is over the cap; returns the bytes left. Safe against other processes
        pruning the same directory at the same time."""
        files = self.usage()
        self.written = 0
        total = sum(size for _, size, _ in files)
        if total <= self.limit:
            return total
        for _, size, path in files:
            if total <= self.limit * 3 // 4:
                break
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass  # another process removed it first: it is gone all the same
            except OSError:
                continue
            total -= size
        return total


_disk_cache: DiskCache | None = None


def disk_cache() -> DiskCache | None:
    """The disk cache the settings ask for now (one per directory and cap, kept between calls so
    that it counts what this process wrote), or None when it is off. BadArgumentError for a bad
    KVMTEST_ASM_CACHE_MB."""
    global _disk_cache
    directory, limit = cache_dir(), disk_limit()
    if directory is None or limit == 0:
        return None
    if _disk_cache is None or (_disk_cache.directory, _disk_cache.limit) != (directory, limit):
        _disk_cache = DiskCache(directory, limit)
    return _disk_cache
