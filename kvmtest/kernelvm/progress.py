"""A pytest plugin for runs inside a kernel-under-test VM: a progress log the VM cannot take with it.

Loaded with `-p kvmtest.kernelvm.progress` when KVMTEST_VM_PROGRESS names a file in the shared
report directory. On the pytest controller it appends one JSON line per test start and per
phase report (pytest's own serialized form, as pytest-xdist sends them) and syncs it, so when
the VM panics or QEMU aborts the host still knows which tests finished, how, and which were in
flight. In a later boot (the run resumed in a fresh VM) it deselects every test the log
already has a verdict for, and the tests the host recorded as having crashed the VM.

Log lines: {"session": fingerprint}, {"selected": [nodeid, ...]} (the tests the first session kept),
{"start": nodeid}, {"report": serialized TestReport}, {"crash": nodeid, "what", "message", "tail"}
(written by the host), {"suspects": [nodeid, ...]}.

The log stays open for the whole session and a test's phase reports are written together when its
teardown is reported: over the VM's 9p share every open costs milliseconds, and a test without its
teardown report counts as in flight whatever else was logged for it (resume.py replaces it by the
crash). With `--kvm-vm-shard=K/N` (a configuration split over N VMs, vmrun.py) the session keeps
every N-th collected test, starting with the K-th: each VM collects the same tests in the same order.
A later boot keeps the tests the first one selected, by id, not by position: a collection that
changed in between (the shared tree edited during the run) would otherwise hand it another VM's
tests and leave some of its own unrun; resume.py reports any selected test without a verdict.
"""

import json
import os
import threading
import time
from pathlib import Path
from typing import TextIO

import pytest

ENV = "KVMTEST_VM_PROGRESS"
# A test still running prints a heartbeat on the VM's console, so the host's stall detector
# (--vm-stall, which only sees console silence) does not take a slow test under TCG for a hung
# VM; past HEARTBEAT_LIMIT_ENV seconds (default 1800) of one test the heartbeat stops, and the
# stall detector then ends it as a VM that stopped answering.
HEARTBEAT_S = 60.0
HEARTBEAT_LIMIT_ENV = "KVMTEST_VM_TEST_LIMIT"


def read(path: Path) -> list[dict]:
    """The log's entries; a line cut short by a dying VM is dropped."""
    entries: list[dict] = []
    try:
        text = path.read_text()
    except OSError:
        return entries
    for line in text.splitlines():
        try:
            entries.append(json.loads(line))
        except ValueError:
            continue
    return entries


def selected(entries: list[dict]) -> list[str] | None:
    """The tests the configuration's first session in this log kept (after -k/-m and the shard), or
    None for a log from before any session selected (or from pytest-xdist workers, which do not log)."""
    return next((e["selected"] for e in entries if "selected" in e), None)


def expected(entries: list[dict]) -> set[str]:
    """Every test some VM of the configuration selected or collected (its first sessions' records,
    after -k/-m), for a report rebuilt from the logs of all its VMs: each must have a result there."""
    out: set[str] = set()
    for e in entries:
        if "selected" in e:
            out.update(e["selected"], e.get("collected", ()))
    return out


def finished(entries: list[dict]) -> set[str]:
    """Tests with a verdict: their teardown was reported, or the host recorded them as a crash."""
    done = {e["report"]["nodeid"] for e in entries if "report" in e and e["report"].get("when") == "teardown"}
    return done | {e["crash"] for e in entries if "crash" in e}


def in_flight(entries: list[dict]) -> list[str]:
    """Tests the last session started and never finished (in start order)."""
    last = max((i for i, e in enumerate(entries) if "session" in e), default=0)
    done = finished(entries)
    return list(dict.fromkeys(e["start"] for e in entries[last:] if "start" in e and e["start"] not in done))


def append(path: Path, entry: dict) -> None:
    """Append `entry` to the progress log at `path` as one JSON line and fsync it: the VM may die
    on its next instruction, and the host must still read the line."""
    with open(path, "a") as f:
        _write(f, [entry])


def _write(f, entries: list[dict]) -> None:
    f.write("".join(json.dumps(e, default=str) + "\n" for e in entries))
    f.flush()
    os.fsync(f.fileno())  # the VM may die on the next instruction


class _Log:
    """The session's progress log, open from the first line to the session's end (one open over 9p,
    not one per line); phase reports wait for the test's teardown and go out in one write."""

    def __init__(self, path: Path):
        self.path = path
        self.file: TextIO | None = None
        self.pending: list[dict] = []

    def write(self, entry: dict) -> None:
        if self.file is None:
            self.file = open(self.path, "a")
        _write(self.file, [*self.pending, entry])
        self.pending = []

    def close(self) -> None:
        if self.pending:
            self.write(self.pending.pop())
        if self.file is not None:
            self.file.close()
            self.file = None


def _log_path():
    return Path(os.environ[ENV]) if os.environ.get(ENV) else None


def _controller(config) -> bool:
    return not hasattr(config, "workerinput")  # pytest-xdist workers have it


def pytest_addoption(parser):
    """pytest hook: --kvm-vm-shard=K/N (set by vmrun.py for a configuration split over N VMs) and
    --kvm-vm-merged-into=STEM (set by vmrun.py for a session whose reports the host merges)."""
    parser.addoption("--kvm-vm-shard", default=None, type=shard_value, metavar="K/N",
                     help="run every N-th collected test starting with the K-th (kvmtest run --kernel sets it "
                          "for a configuration split over N VMs; host shards claim theirs: kvmtest.shard_claims)")
    parser.addoption("--kvm-vm-merged-into", default=None, metavar="STEM",
                     help="this session's reports are intermediate: the host rebuilds STEM.{xml,ktap,html} "
                          "from the progress logs and removes them (kvmtest run --kernel sets it)")


def shard_value(text: str) -> tuple[int, int]:
    """'2/3' -> (2, 3); the argparse type of --kvm-vm-shard (1 <= K <= N)."""
    import argparse

    k, sep, n = text.partition("/")
    if sep and k.isdigit() and n.isdigit() and 1 <= int(k) <= int(n):
        return int(k), int(n)
    raise argparse.ArgumentTypeError(f"{text!r}: expected K/N with 1 <= K <= N, e.g. 1/2")


def shard_items(items: list, shard: tuple[int, int] | None) -> tuple[list, list]:
    """(kept, dropped): every N-th of the collected `items` starting with the K-th for shard (K, N)."""
    if shard is None:
        return list(items), []
    k, n = shard
    return ([i for at, i in enumerate(items) if at % n == k - 1],
            [i for at, i in enumerate(items) if at % n != k - 1])


@pytest.hookimpl(trylast=True)  # after -k/-m deselection: the shards split the tests that will run
def pytest_collection_modifyitems(session, config, items):
    """pytest hook: keep this VM's shard of the tests (--kvm-vm-shard), then deselect the tests the
    progress log already has a verdict for (a resumed run in a fresh VM), reporting both as
    deselected."""
    path = _log_path()
    entries = read(path) if path is not None else []
    earlier = selected(entries)
    if earlier is not None:  # a resumed session: the first one's tests, whatever the collection now
        wanted = set(earlier)
        kept = [i for i in items if i.nodeid in wanted]
        deselected = [i for i in items if i.nodeid not in wanted]
    else:
        kept, deselected = shard_items(items, config.getoption("kvm_vm_shard", None))
        if _LOG[0] is not None:  # what this VM owns, and what it saw of the whole (after -k/-m)
            _LOG[0].write({"selected": [i.nodeid for i in kept], "collected": [i.nodeid for i in items]})
    skip = finished(entries)
    deselected += [i for i in kept if i.nodeid in skip]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = [i for i in kept if i.nodeid not in skip]


def pytest_sessionstart(session):
    """pytest hook: log the session's start with the VM kernel's fingerprint (controller only)."""
    path = _log_path()
    if path is not None and _controller(session.config):
        from ..plugin import FINGERPRINT_KEY

        _LOG[0] = _Log(path)
        _LOG[0].write({"session": session.config.stash.get(FINGERPRINT_KEY, {})})


def pytest_sessionfinish(session):
    """pytest hook: close the progress log (writing any phase report still held)."""
    if _LOG[0] is not None:
        _LOG[0].close()


def pytest_runtest_logstart(nodeid, location):
    """pytest hook: log that test `nodeid` started, so a VM that dies now names it in flight."""
    log = _LOG[0]
    if log is not None:
        _RUNNING[nodeid] = time.monotonic()
        log.write({"start": nodeid})


def pytest_runtest_logreport(report):
    """pytest hook: log each phase report of a test in pytest's serialized form (as pytest-xdist
    sends them), from which resume.py rebuilds the reports after a crash; held until the test's
    teardown report, then written together."""
    log = _LOG[0]
    if log is not None:
        config = _CONFIG[0]
        entry = {"report": config.hook.pytest_report_to_serializable(config=config, report=report)}
        if report.when == "teardown":
            log.write(entry)
            _RUNNING.pop(report.nodeid, None)
        else:
            log.pending.append(entry)


_LOG: list = [None]  # the controller's open progress log (set at session start)
_CONFIG: list = [None]  # logstart/logreport hooks get no config argument
_RUNNING: dict[str, float] = {}  # tests in flight -> when they started (time.monotonic)


def heartbeat_lines(running: dict[str, float], now: float, limit_s: float) -> list[str]:
    """Console lines for the tests in flight younger than `limit_s` seconds (none once all are older)."""
    return [f"kvmtest-vm: heartbeat: {nodeid} running for {now - started:.0f} s"
            for nodeid, started in list(running.items()) if now - started < limit_s]


def _heartbeat(limit_s: float) -> None:
    while True:
        time.sleep(HEARTBEAT_S)
        lines = heartbeat_lines(_RUNNING, time.monotonic(), limit_s)
        if not lines:
            continue
        try:  # the console itself: pytest's output capture owns stdout while a test runs in this process
            with open("/dev/console", "w") as console:
                console.write("\n".join(lines) + "\n")
        except OSError:
            pass


def pytest_configure(config):
    """pytest hook: remember the config (the log hooks get none); with --kvm-vm-merged-into, have
    each "kvmtest report:" line say its file is intermediate; and on the controller of a run with a
    progress log, start the console heartbeat thread (KVMTEST_VM_TEST_LIMIT seconds per test,
    default 1800)."""
    _CONFIG[0] = config
    merged = config.getoption("kvm_vm_merged_into", None)
    if merged:  # a shard, a resumed boot or suspects: the console must not offer these files as the run's
        from ..reports.recorder import NOTE_KEY

        config.stash[NOTE_KEY] = (f"intermediate: kvmtest merges this session's results into {merged}.xml, "
                                  ".ktap and .html and removes this file")
    if _log_path() is not None and _controller(config):
        limit = float(os.environ.get(HEARTBEAT_LIMIT_ENV) or 1800)
        threading.Thread(target=_heartbeat, args=(limit,), name="kvmtest-vm-heartbeat", daemon=True).start()
