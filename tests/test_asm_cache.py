"""The assembler's caches are bounded: an LRU of guests in memory, a size-capped directory on
disk that several processes may fill and prune at once, and settings refused by name."""

import json
import multiprocessing
import os

import pytest

from kvmtest.asm import Section, assemble, assemble_sections, cache
from kvmtest.errors import BadArgumentError


@pytest.fixture(autouse=True)
def fresh_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("KVMTEST_CACHE_DIR", str(tmp_path / "asm"))
    for var in (cache.ENTRIES_VAR, cache.DISK_MB_VAR):
        monkeypatch.delenv(var, raising=False)
    cache.clear()
    yield tmp_path / "asm"
    cache.clear()


def _source(n: int) -> str:
    return f"mov eax, {n}\nret"


def _disk_total(directory) -> int:
    return sum(size for _, size, _ in cache.DiskCache(directory, 0).usage())


def test_lru_drops_the_least_recently_used():
    lru = cache.Lru(2)
    lru.put("a", 1)
    lru.put("b", 2)
    assert lru.get("a") == 1          # a is now the most recent
    lru.put("c", 3)                   # so b goes
    assert lru.keys() == ["a", "c"] and lru.get("b") is None
    lru.resize(1)
    assert lru.keys() == ["c"]
    lru.resize(0)
    lru.put("d", 4)
    assert len(lru) == 0


def test_memory_cache_keeps_the_configured_number_of_guests(monkeypatch):
    monkeypatch.setenv("KVMTEST_CACHE_DIR", "")
    monkeypatch.setenv(cache.ENTRIES_VAR, "3")
    keys = []
    for n in range(5):
        assemble(_source(n), 32, 0x1000)
        keys.append(cache.key([Section.from_text("<guest>", 0x1000, 32, _source(n))], {}))
    assert cache.GUESTS.keys() == keys[2:]
    assemble(_source(2), 32, 0x1000)  # a hit makes it the most recent
    assemble(_source(5), 32, 0x1000)  # so the next one to go is 3
    assert cache.GUESTS.keys()[:2] == [keys[4], keys[2]]
    assert keys[3] not in cache.GUESTS


def test_zero_entries_keeps_nothing_in_memory(monkeypatch):
    monkeypatch.setenv("KVMTEST_CACHE_DIR", "")
    monkeypatch.setenv(cache.ENTRIES_VAR, "0")
    first = assemble(_source(1), 32, 0x1000)
    assert len(cache.GUESTS) == 0 and assemble(_source(1), 32, 0x1000) == first


@pytest.mark.parametrize("var,value", [
    ("KVMTEST_ASM_CACHE_ENTRIES", "many"), ("KVMTEST_ASM_CACHE_ENTRIES", "-1"), ("KVMTEST_ASM_CACHE_ENTRIES", "1.5"),
    ("KVMTEST_ASM_CACHE_ENTRIES", ""), ("KVMTEST_ASM_CACHE_MB", "-3"), ("KVMTEST_ASM_CACHE_MB", "nan"),
    ("KVMTEST_ASM_CACHE_MB", "inf"), ("KVMTEST_ASM_CACHE_MB", "1e3"), ("KVMTEST_ASM_CACHE_MB", "64M"),
])
def test_a_bad_setting_is_one_error_naming_the_variable(monkeypatch, var, value):
    monkeypatch.setenv(var, value)
    with pytest.raises(BadArgumentError, match=rf"^{var}={value!r}: expected "):
        assemble("nop", 64, 0)


def test_guests_share_one_file_for_their_common_large_section(fresh_cache):
    handlers = Section.from_text("handlers", 0x2000, 64, "\n".join(f"h{n}: nop" for n in range(200)) + "\nret")
    for n in range(3):
        assemble_sections([Section.from_text("code", 0x1000, 64, f"mov eax, {n}\ncall h7"), handlers])
    assert len(list(fresh_cache.glob("k-*.json"))) == 3
    assert len(list(fresh_cache.glob("s-*.json"))) == 1  # the handlers, stored once
    cache.clear()
    loaded = [assemble_sections([Section.from_text("code", 0x1000, 64, f"mov eax, {n}\ncall h7"), handlers])
              for n in range(3)]
    assert loaded[0][1] is loaded[1][1] is loaded[2][1]  # read back once, shared in memory
    assert loaded[0][1].labels["h7"] == 0x2007


def test_disk_cache_stays_under_its_cap_and_keeps_what_was_used_last(monkeypatch, fresh_cache):
    monkeypatch.setenv(cache.DISK_MB_VAR, "0.1")  # 100 KiB: about 25 files of one 4 KiB block
    limit = int(0.1 * 2**20)
    stored = []
    real_store = cache.DiskCache.store
    monkeypatch.setattr(cache.DiskCache, "store", lambda self, k, r: stored.append(k) or real_store(self, k, r))
    assemble(_source(0), 32, 0x1000)
    for n in range(1, 120):
        assemble(_source(n), 32, 0x1000)
        cache.clear()
        assemble(_source(0), 32, 0x1000)  # read back from disk each time: the most recently used
        assert _disk_total(fresh_cache) <= limit + limit // 8 + 8192, n
    files = list(fresh_cache.glob("k-*.json"))
    assert 0 < len(files) < 120
    key0 = cache.key([Section.from_text("<guest>", 0x1000, 32, _source(0))], {})
    assert (fresh_cache / f"k-{key0}.json").exists() and stored.count(key0) == 1, \
        "the guest read back on every round was pruned and assembled again"
    key1 = cache.key([Section.from_text("<guest>", 0x1000, 32, _source(1))], {})
    assert not (fresh_cache / f"k-{key1}.json").exists(), "the least recently used guest survived"


def test_disk_cache_can_be_turned_off(monkeypatch, fresh_cache):
    monkeypatch.setenv(cache.DISK_MB_VAR, "0")
    assemble("nop", 64, 0)
    assert not fresh_cache.exists()


def test_a_file_another_process_removed_is_a_miss_not_an_error(monkeypatch, fresh_cache):
    first = assemble(_source(1), 32, 0x1000)
    disk = cache.DiskCache(fresh_cache, 1)
    real_unlink = os.unlink

    def raced_unlink(path):  # another worker removes each file just before this one does
        real_unlink(path)
        real_unlink(path)

    monkeypatch.setattr(cache.os, "unlink", raced_unlink)
    assert disk.prune() == 0
    monkeypatch.undo()
    monkeypatch.setenv("KVMTEST_CACHE_DIR", str(fresh_cache))
    cache.clear()
    assert assemble(_source(1), 32, 0x1000) == first  # assembled again, not an error


def test_files_that_vanish_while_listed_are_skipped(monkeypatch, fresh_cache):
    for n in range(4):
        assemble(_source(n), 32, 0x1000)
    entries = list(os.scandir(fresh_cache))
    assert len(entries) == 4

    class Listing:  # another process removes two files between the listing and their stat()
        def __init__(self, path):
            pass

        def __enter__(self):
            for entry in entries[:2]:
                os.unlink(entry.path)
            return iter(entries)

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(cache.os, "scandir", Listing)
    listed = [path for _, _, path in cache.DiskCache(fresh_cache, 1).usage()]
    assert sorted(listed) == sorted(e.path for e in entries[2:])
    assert cache.DiskCache(fresh_cache, 1).prune() == 0


def test_a_half_written_or_foreign_file_is_left_alone(fresh_cache):
    fresh_cache.mkdir()
    (fresh_cache / "notes.txt").write_text("x" * 10000)
    (fresh_cache / ".tmp-abc").write_text("{")  # another process is writing it
    (fresh_cache / f"k-{'0' * 64}.json").write_text("{not json")
    (fresh_cache / f"k-{'1' * 64}.json").write_text('["../../etc/passwd"]')
    assert cache.DiskCache(fresh_cache, 1 << 20).load("0" * 64) is None
    assert cache.DiskCache(fresh_cache, 1 << 20).load("1" * 64) is None
    assert cache.DiskCache(fresh_cache, 1).prune() == 0
    assert sorted(p.name for p in fresh_cache.iterdir()) == [".tmp-abc", "notes.txt"]


def _worker(directory: str, first: int, count: int, queue) -> None:
    """One xdist-like process: assembles `count` distinct guests into the shared, tiny cache."""
    try:
        os.environ["KVMTEST_CACHE_DIR"] = directory
        os.environ[cache.DISK_MB_VAR] = "0.05"
        os.environ[cache.ENTRIES_VAR] = "0"
        for n in range(first, first + count):
            assemble(_source(n), 32, 0x1000)
            disk = cache.disk_cache()
            assert disk is not None
            disk.prune()  # every round, so that the workers prune at the same time
        queue.put(None)
    except BaseException as e:  # noqa: BLE001 - reported to the test
        queue.put(f"{type(e).__name__}: {e}")


def test_several_processes_fill_and_prune_one_directory_at_once(fresh_cache):
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    workers = [ctx.Process(target=_worker, args=(str(fresh_cache), 1000 * w, 60, queue)) for w in range(4)]
    for w in workers:
        w.start()
    results = [queue.get(timeout=120) for _ in workers]
    for w in workers:
        w.join(timeout=60)
    assert results == [None] * 4, results
    assert [w.exitcode for w in workers] == [0] * 4
    limit = int(0.05 * 2**20)
    assert _disk_total(fresh_cache) <= limit
    assert not list(fresh_cache.glob(".tmp-*")), "a half-written file was left behind"
    for path in fresh_cache.glob("k-*.json"):  # every file is whole
        json.loads(path.read_text())


@pytest.mark.parametrize("var", ["KVMTEST_ASM_CACHE_ENTRIES", "KVMTEST_ASM_CACHE_MB"])
def test_a_bad_setting_stops_the_session_with_one_usage_error(pytester, monkeypatch, var):
    """The session ends before any test with the variable named, not with one failure per guest."""
    monkeypatch.setenv(var, "lots")
    pytester.makepyfile("def test_never_runs():\n    raise AssertionError('ran')\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*{var}='lots': expected *"])
    assert "ran" not in result.stdout.str()
