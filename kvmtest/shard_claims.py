"""Host shards that take their tests as they go (`kvmtest run -j N` on the host: kvmtest.host_shards).

Every shard collects the same tests in the same order. Instead of keeping every N-th of them
(--kvm-vm-shard, what the --kernel VMs do: their resume after a crash needs to know a VM's share
in advance), a shard given `--kvm-shard-claims=FILE` claims one test at a time, in collection
order, from a counter all the shards share, and runs it: a shard that meets the slow tests (a
1.7 s memslot walk, three 1 s sync_regs races) takes fewer, so the shards end within about one
test of each other instead of up to seconds apart.

The counter is FILE's length: a claim appends one byte (O_APPEND: the kernel makes each append
land at the end, one after the other, whoever writes) and reads this shard's file position after
it, which is the length just after its own byte: claim number length - 1, unique to this shard. Before
claiming, each shard checks that it collected what the first one did (FILE.collected: the test ids,
which also let kvmtest.host_shards name any test no shard reported).
FILE must be on a local file system (kvmtest.host_shards makes it in the temporary directory);
NFS does not keep O_APPEND atomic across opens.

What a shard claims is what it set out to run (CLAIMED_KEY, read by kvmtest.reports.recorder: a test
it claimed and did not finish is an error in its report). A shard whose loop ends early (Ctrl-C, an
internal error) first claims every test still unclaimed, so each test nobody ran is an error in one
shard's report, as in a run cut short in one process.

With `--kvm-shard-log=LOG` a shard also logs each test it claims, starts and finishes
(kvmtest.shard_log: what is left of a shard that dies).

pytest's cache of last failures (--lf) is written by every shard at its end: each would write its own
view, the last one's winning. Each shard instead applies only what it changed (tests it saw fail added,
tests it saw pass or skip removed) to what is in the cache then, under a lock on FILE.

Tests marked `waits` (kvmtest.markers: a test that spends most of its time waiting for a timer or a
timeout, not computing) are claimed from a second counter, FILE.waits. A shard given --kvm-shard-role=waits
claims those and nothing else: kvmtest.host_shards starts one beside the N others, so that N CPUs are
not left idle while a check waits (on the 2-CPU development host, the 14 marked checks slept about
4.3 s of the two shards' time in a whole-suite run). The other shards claim the waiting tests too once
their own counter runs out, so a waits shard that falls behind (or dies) holds nobody up.

Which shard runs a test differs from run to run, as under pytest-xdist's load scheduling; each
shard still runs its tests in collection order (the unmarked ones, then any marked ones it takes
over), so a module's or class's fixtures are set up at most once per shard and queue, and pytest
tears fixtures down knowing the next test (a shard claims it before running the current one).
"""

import contextlib
import fcntl
import os
import stat
from pathlib import Path

import pytest

CLAIMED_KEY = pytest.StashKey[list]()  # the nodeids this shard claimed, in claim order
_LASTFAILED_KEY = pytest.StashKey[dict]()  # pytest's last failures as this shard started
_COUNTER_KEY = pytest.StashKey[str]()  # the counter file, once opened as one (the lock of the cache above)


pytest_plugins = ["kvmtest.shard_log"]  # the log of what this shard claims, starts and finishes


def pytest_addoption(parser):
    """pytest hook: --kvm-shard-claims=FILE, --kvm-shard-role=main|waits."""
    parser.addoption("--kvm-shard-claims", default=None, metavar="FILE",
                     help="run only the tests claimed from the counter in FILE, shared with the other shards "
                          "(kvmtest run -j N sets it on the host: kvmtest.shard_claims)")
    parser.addoption("--kvm-shard-role", choices=("main", "waits"), default="main",
                     help="with --kvm-shard-claims: waits to claim only the tests marked `waits`, from FILE.waits (the "
                          "shard kvmtest run -j N starts beside the N others for them); main (the default) to claim "
                          "the others first. kvmtest run gives each shard its role last on the command line, so none "
                          "in addopts or PYTEST_ADDOPTS overrides it")


class Claims:
    """The shared counter in `path` (created empty by whoever starts the shards) over `count` tests;
    `taken`: the indices this process claimed. OSError if `path` cannot be opened for appending,
    ValueError if it is not a regular file (/dev/null, whose position stays 0, would hand out the
    same claim for ever; a FIFO would block) or holds anything but claims (a file of the user's
    would shift every claim and grow)."""

    def __init__(self, path: str, count: int):
        if not stat.S_ISREG(os.stat(path).st_mode):  # before the open, which blocks on a FIFO
            raise ValueError("not a regular file")
        with open(path, "rb") as f:
            if f.read(4096).strip(b"."):
                raise ValueError("holds something other than claims (the shards start it empty)")
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        self.count = count
        self.taken: list[int] = []

    def take_the_rest(self) -> None:
        """Claim every test not claimed yet (a shard that stops early reports them unfinished)."""
        while self.next() is not None:
            pass

    def next(self) -> int | None:
        """The next unclaimed test's index (0 first; every call in every shard gets another), or
        None once all are claimed."""
        os.write(self.fd, b".")
        index = os.lseek(self.fd, 0, os.SEEK_CUR) - 1
        if index >= self.count:
            return None
        self.taken.append(index)
        return index

    def close(self) -> None:
        """Close the counter file (the counter stays for the other shards)."""
        os.close(self.fd)


WAITS = "waits"   # the marker of tests that mostly wait (kvmtest.markers)
WAITS_SUFFIX = ".waits"    # FILE.waits: the counter of the tests marked waits
MARKED_SUFFIX = ".marked"  # FILE.marked: how many tests are marked waits, for whoever starts the waits shard
COLLECTED_SUFFIX = ".collected"  # FILE.collected: the test ids every shard collected, one a line


class Queues:
    """What one shard claims from: the session's `items` not marked `waits` from the counter `path`,
    those marked from `path`.waits (made here if it is not there yet); a waits shard (`waits_shard`)
    claims only the marked ones, any other shard the unmarked ones and then the marked ones still
    unclaimed. `taken`: the indices into `items` this shard claimed, in claim order. OSError or
    ValueError as Claims raises them."""

    def __init__(self, path: str, items: list, waits_shard: bool):
        marked = [i for i, item in enumerate(items) if item.get_closest_marker(WAITS) is not None]
        unmarked = sorted(set(range(len(items))) - set(marked))
        main = Claims(path, len(unmarked))  # checks `path` first: nothing is made beside a wrong one
        waits_path = f"{path}{WAITS_SUFFIX}"
        try:
            with contextlib.suppress(FileExistsError):  # the first shard here makes it (O_EXCL: no FIFO's open)
                os.close(os.open(waits_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            try:
                waits = Claims(waits_path, len(marked))
            except ValueError as e:
                raise ValueError(f"its second counter {waits_path}: {e}") from None
        except BaseException:
            main.close()
            raise
        if waits_shard:
            main.close()
            self._queues = [(waits, marked)]
        else:
            self._queues = [(main, unmarked), (waits, marked)]
        self._open = list(self._queues)  # those not yet run out
        self.taken: list[int] = []
        self.marked = len(marked)

    def next(self) -> int | None:
        """The index into the items of the next test this shard claims, or None once its queues are
        all claimed."""
        while self._open:
            claims, indices = self._open[0]
            k = claims.next()
            if k is not None:
                self.taken.append(indices[k])
                return indices[k]
            self._open.pop(0)  # run out: not asked again (each ask appends a byte)
        return None

    def take_the_rest(self) -> None:
        """Claim every test of this shard's queues not claimed yet (a shard that stops early reports
        them unfinished)."""
        while self.next() is not None:
            pass

    def close(self) -> None:
        """Close the counter files (the counters stay for the other shards)."""
        for claims, _ in self._queues:
            claims.close()


@pytest.hookimpl(tryfirst=True)
def pytest_runtestloop(session):
    """pytest hook: with --kvm-shard-claims, pytest's own loop over the session's tests, over the
    tests this shard claims instead (collection errors and --collect-only as pytest has them)."""
    path = session.config.getoption("kvm_shard_claims", None)
    if path is None:
        return None
    if session.config.option.collectonly:
        return True
    session.config.stash[CLAIMED_KEY] = []  # until it claims any: a shard refused below reports nothing
    items = session.items
    waits_shard = session.config.getoption("kvm_shard_role", "main") == "waits"
    claims = _open(path, items, waits_shard)
    session.config.stash[_COUNTER_KEY] = path
    if session.testsfailed and not session.config.option.continue_on_collection_errors:
        # every shard stops as one pytest does; what was collected is reported unfinished once
        claims.take_the_rest()
        _stop_claiming(session, claims, items)
        raise session.Interrupted(f"{session.testsfailed} error{'s' if session.testsfailed != 1 else ''} "
                                  "during collection")
    try:
        _same_tests(path, items)
        if not waits_shard:  # for kvmtest.host_shards, which starts the waits shard if any
            _publish(f"{path}{MARKED_SUFFIX}", str(claims.marked), path)
    except pytest.UsageError:
        claims.close()
        raise
    from .shard_log import ShardLog  # loaded by now as this plugin's pytest_plugins: imported first, pytest warns

    log = ShardLog.open(session.config)
    ended = False
    try:
        index = claims.next()
        log.claimed(items, index)
        while index is not None:
            following = claims.next()  # before the run: pytest's teardown needs the next test
            log.claimed(items, following)
            nextitem = None if following is None else items[following]
            items[index].config.hook.pytest_runtest_protocol(item=items[index], nextitem=nextitem)
            if session.shouldfail:
                raise session.Failed(session.shouldfail)
            if session.shouldstop:
                raise session.Interrupted(session.shouldstop)
            index = following
        ended = True
    finally:
        log.close()
        if not ended:  # cut short: what nobody claimed yet is this shard's to report unfinished
            claims.take_the_rest()
        _stop_claiming(session, claims, items)
    return True


def _open(path: str, items: list, waits_shard: bool) -> Queues:
    """This shard's Queues over `items` from the counter `path`; pytest.UsageError naming what is wrong."""
    if not path:
        raise pytest.UsageError("--kvm-shard-claims: empty; expected the counter file the shards share")
    try:
        return Queues(path, items, waits_shard)
    except OSError as e:
        where = "" if e.filename in (None, path) else f" ({e.filename})"
        raise pytest.UsageError(f"--kvm-shard-claims={path}: {e.strerror}{where}") from None
    except ValueError as e:
        raise pytest.UsageError(f"--kvm-shard-claims={path}: {e}: expected the counter file the shards "
                                "share") from None


def _same_tests(path: str, items: list) -> None:
    """pytest.UsageError unless this shard collected what the first shard to get here did (the same
    test ids in the same order: a claim is an index into them). Test ids made at random (a
    parametrization drawn anew per process) differ between shards; pytest-xdist refuses those too.
    The first shard leaves the ids in `path`.collected (read_collected)."""
    mine = "".join(f"{item.nodeid}\n" for item in items)
    theirs = _publish(f"{path}{COLLECTED_SUFFIX}", mine, path)
    if theirs != mine:
        raise pytest.UsageError(f"this shard collected other tests than the first shard did ({len(items)} ids, "
                                "or another order): are some test ids made at random? Run them with --xdist "
                                "or -j 0")


def read_collected(path: str) -> list[str] | None:
    """The test ids the shards claiming from the counter `path` collected, in order; None if no shard
    got that far (or the file cannot be read)."""
    try:
        return Path(f"{path}{COLLECTED_SUFFIX}").read_text().splitlines()
    except OSError:
        return None


def _publish(target: str, text: str, counter: str) -> str:
    """Write `text` to `target` unless a shard did first (linked whole into place, so nobody reads it
    half written); what `target` holds then. pytest.UsageError naming --kvm-shard-claims=`counter`
    if it cannot be written or read."""
    mine = f"{target}.{os.getpid()}"
    try:
        Path(mine).write_text(text)
        try:
            os.link(mine, target)
        except FileExistsError:
            pass
        finally:
            os.unlink(mine)
        return Path(target).read_text()
    except OSError as e:
        raise pytest.UsageError(f"--kvm-shard-claims={counter}: {e.strerror} ({e.filename})") from None


def _stop_claiming(session, claims: Queues, items: list) -> None:
    claims.close()
    session.config.stash[CLAIMED_KEY] = [items[i].nodeid for i in claims.taken]


def _lastfailed(config) -> dict | None:
    """pytest's cacheprovider's last failures as it holds them now (None: no cache plugin)."""
    lf = config.pluginmanager.get_plugin("lfplugin")
    return None if lf is None else {str(k): v for k, v in lf.lastfailed.items()}


@pytest.hookimpl(trylast=True)  # after the cacheprovider read the cache
def pytest_configure(config):
    """pytest hook: remember the last failures this shard started with (see the module)."""
    if config.getoption("kvm_shard_claims", None) is None:
        for dest, option in (("kvm_shard_role", "--kvm-shard-role"), ("kvm_shard_log", "--kvm-shard-log")):
            if config.getoption(dest, None) not in (None, "main"):  # given, so meant: it would do nothing
                raise pytest.UsageError(f"{option}: needs --kvm-shard-claims=FILE, the counters the shards claim from")
    if config.getoption("kvm_shard_claims", None):
        start = _lastfailed(config)
        if start is not None:
            config.stash[_LASTFAILED_KEY] = start


@pytest.hookimpl(tryfirst=True)  # before the cacheprovider writes its view of the last failures
def pytest_sessionfinish(session):
    """pytest hook: write pytest's cache of last failures as it is now with this shard's changes
    applied, under a lock on the counter, and keep the cacheprovider from writing its own view over
    what other shards add afterwards."""
    config = session.config
    start, mine = config.stash.get(_LASTFAILED_KEY, None), _lastfailed(config)
    counter = config.stash.get(_COUNTER_KEY, None)  # None: refused (a FIFO would block the open below)
    if start is None or mine is None or config.cache is None or counter is None:
        return
    try:
        fd = os.open(counter, os.O_RDONLY)
    except OSError:
        return  # the counter is gone: nothing to lock, the cacheprovider writes this shard's own view
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        now = config.cache.get("cache/lastfailed", {})
        merged = {k: v for k, v in now.items() if k not in start or k in mine}  # less what this shard saw pass
        merged.update((k, v) for k, v in mine.items() if start.get(k) != v)    # with what it saw fail
        config.cache.set("cache/lastfailed", merged)
    finally:
        os.close(fd)  # releases the lock
    # The cacheprovider's own sessionfinish would write this shard's view over what other shards add
    # meanwhile; it writes nothing in a --cache-show session, so this one becomes one now. What else
    # it writes, the ids collected (--nf), every shard has the same of: written here.
    nf = config.pluginmanager.get_plugin("nfplugin")
    if nf is not None and not config.getoption("collectonly"):
        config.cache.set("cache/nodeids", sorted(str(n) for n in nf.cached_nodeids))
    config.option.cacheshow = True
