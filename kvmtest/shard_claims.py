"""Host shards that take their tests as they go (`kvmtest run -j N` on the host: kvmtest.host_shards).

Every shard collects the same tests in the same order. Instead of keeping every N-th of them
(--kvm-vm-shard, what the --kernel VMs do: their resume after a crash needs to know a VM's share
in advance), a shard given `--kvm-shard-claims=FILE` claims one test at a time, in collection
order, from a counter all the shards share, and runs it: a shard that meets the slow tests (a
1.7 s memslot walk, three 1 s sync_regs races) takes fewer, so the shards end within about one
test of each other instead of up to seconds apart.

The counter is FILE's length: a claim appends one byte (O_APPEND: the kernel makes each append
land at the end, one after the other, whoever writes) and reads this shard's file position after
it, which is the length just after its own byte: claim number length - 1, unique to this shard.
FILE must be on a local file system (kvmtest.host_shards makes it in the temporary directory);
NFS does not keep O_APPEND atomic across opens.

What a shard claims is what it set out to run (CLAIMED_KEY, read by kvmtest.reports.recorder: a test
it claimed and did not finish is an error in its report). A shard whose loop ends early (Ctrl-C, an
internal error) first claims every test still unclaimed, so each test nobody ran is an error in one
shard's report, as in a run cut short in one process.

Which shard runs a test differs from run to run, as under pytest-xdist's load scheduling; each
shard still runs its tests in collection order, so a module's or class's fixtures are set up at
most once per shard, and pytest tears fixtures down knowing the next test (a shard claims it
before running the current one).
"""

import os

import pytest

CLAIMED_KEY = pytest.StashKey[list]()  # the nodeids this shard claimed, in claim order


def pytest_addoption(parser):
    """pytest hook: --kvm-shard-claims=FILE."""
    parser.addoption("--kvm-shard-claims", default=None, metavar="FILE",
                     help="run only the tests claimed from the counter in FILE, shared with the other shards "
                          "(kvmtest run -j N sets it on the host: kvmtest.shard_claims)")


class Claims:
    """The shared counter in `path` (created empty by whoever starts the shards) over `count` tests;
    `taken`: the indices this process claimed. OSError if `path` cannot be opened for appending."""

    def __init__(self, path: str, count: int):
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        self.count = count
        self.taken: list[int] = []

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


@pytest.hookimpl(tryfirst=True)
def pytest_runtestloop(session):
    """pytest hook: with --kvm-shard-claims, pytest's own loop over the session's tests, over the
    tests this shard claims instead (collection errors and --collect-only as pytest has them)."""
    path = session.config.getoption("kvm_shard_claims", None)
    if not path:
        return None
    if session.testsfailed and not session.config.option.continue_on_collection_errors:
        raise session.Interrupted(f"{session.testsfailed} error{'s' if session.testsfailed != 1 else ''} "
                                  "during collection")
    if session.config.option.collectonly:
        return True
    items = session.items
    try:
        claims = Claims(path, len(items))
    except OSError as e:
        raise pytest.UsageError(f"--kvm-shard-claims={path}: {e.strerror}") from None
    ended = False
    try:
        index = claims.next()
        while index is not None:
            following = claims.next()  # before the run: pytest's teardown needs the next test
            nextitem = None if following is None else items[following]
            items[index].config.hook.pytest_runtest_protocol(item=items[index], nextitem=nextitem)
            if session.shouldfail:
                raise session.Failed(session.shouldfail)
            if session.shouldstop:
                raise session.Interrupted(session.shouldstop)
            index = following
        ended = True
    finally:
        while not ended and claims.next() is not None:
            pass  # cut short: what nobody claimed yet is this shard's to report unfinished
        claims.close()
        session.config.stash[CLAIMED_KEY] = [items[i].nodeid for i in claims.taken]
    return True
