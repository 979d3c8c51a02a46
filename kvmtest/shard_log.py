"""A host shard's log (`--kvm-shard-log=LOG`, given by kvmtest.host_shards to each shard it starts):
a line for each test the shard claims (kvmtest.shard_claims), starts and finishes, with its status
and message. Should the shard die (a guest that takes the process down, the OOM killer),
kvmtest.host_shards rebuilds what it finished from LOG (read_log), names the test it died in and
reports the tests it had claimed as unfinished, instead of losing them all. One small write per
event and no fsync: a process that dies loses nothing it wrote.
"""

import os
import stat
from pathlib import Path

import pytest


def pytest_addoption(parser):
    """pytest hook: --kvm-shard-log=LOG."""
    parser.addoption("--kvm-shard-log", default=None, metavar="LOG",
                     help="append each test this shard claims, starts and finishes to LOG, for a report should "
                          "the shard die (kvmtest run -j N sets it)")


_CLAIM, _START, _DONE = "claim", "start", "done"


class ShardLog:
    """A shard's log: one line per event, `kind<TAB>nodeid[<TAB>status<TAB>message]`; `recorder`:
    kvmtest's report recorder, whose outcome of a test the done line gives."""

    def __init__(self, fd: int | None, recorder=None):
        self.fd, self.recorder = fd, recorder

    @classmethod
    def open(cls, config) -> "ShardLog":
        """The log --kvm-shard-log names (one that writes nothing without it); pytest.UsageError if
        it cannot be opened. It is this process's current log until close()."""
        path = config.getoption("kvm_shard_log", None)
        if not path:
            return cls(None)
        try:
            if os.path.exists(path) and not stat.S_ISREG(os.stat(path).st_mode):  # a FIFO would block the open
                raise pytest.UsageError(f"--kvm-shard-log={path}: not a regular file")
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as e:
            raise pytest.UsageError(f"--kvm-shard-log={path}: {e.strerror}") from None
        _CURRENT[0] = log = cls(fd, config.pluginmanager.get_plugin("kvmtest-reports"))
        return log

    def close(self) -> None:
        """Close the log (the file stays, for kvmtest.host_shards); no longer this process's current."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        if _CURRENT[0] is self:
            _CURRENT[0] = None

    def write(self, *fields: str) -> None:
        """One line of `fields`, tab-separated (tabs and newlines in them made spaces), in one write."""
        if self.fd is not None:
            line = "\t".join(f.replace("\t", " ").replace("\n", " ") for f in fields) + "\n"
            os.write(self.fd, line.encode("utf-8", "replace"))

    def claimed(self, items: list, index: int | None) -> None:
        """Log that this shard claimed items[index] (nothing for None: none left)."""
        if index is not None:
            self.write(_CLAIM, items[index].nodeid)


def pytest_runtest_logstart(nodeid, location):
    """pytest hook: log that the test started (see the module)."""
    log = _CURRENT[0]
    if log is not None:
        log.write(_START, nodeid)


@pytest.hookimpl(trylast=True)  # after kvmtest's recorder folded the report into the test's outcome
def pytest_runtest_logreport(report):
    """pytest hook: log the test's outcome once its teardown is reported (see the module)."""
    log = _CURRENT[0]
    if log is not None and report.when == "teardown":
        outcome = log.recorder.outcomes.get(report.nodeid) if log.recorder else None
        status = outcome.status if outcome else ("failed" if report.failed else "passed")
        message = (outcome.message if outcome else "").splitlines()[0:1]
        log.write(_DONE, report.nodeid, status, message[0] if message else "")


_CURRENT: list = [None]  # the log of this process's session (logstart/logreport hooks get no config)


def read_log(path) -> tuple[dict[str, tuple[str, str]], list[str], list[str]]:
    """What a shard's log says: ({nodeid: (status, message)} of the tests it finished, the tests it
    started and did not finish, the tests it claimed and did not start), each in log order; a line
    the dying process cut short is ignored."""
    done: dict[str, tuple[str, str]] = {}
    started: dict[str, None] = {}
    claimed: dict[str, None] = {}
    try:
        lines = Path(path).read_text(encoding="utf-8", errors="replace").split("\n")[:-1]  # the last: cut or ""
    except OSError:
        return {}, [], []
    for line in lines:
        kind, _, rest = line.partition("\t")
        nodeid, _, result = rest.partition("\t")
        if kind == _CLAIM:
            claimed[nodeid] = None
        elif kind == _START:
            started[nodeid] = None
        elif kind == _DONE:
            status, _, message = result.partition("\t")
            done[nodeid] = (status, message)
    return (done, [n for n in started if n not in done],
            [n for n in claimed if n not in started and n not in done])
