"""A pytest plugin for runs inside a kernel-under-test VM: a progress log the VM cannot take with it.

Loaded with `-p kvmtest.kernelvm.progress` when KVMTEST_VM_PROGRESS names a file in the shared
report directory. On the pytest controller it appends one JSON line per test start and per
phase report (pytest's own serialized form, as pytest-xdist sends them) and syncs it, so when
the VM panics or QEMU aborts the host still knows which tests finished, how, and which were in
flight. In a later boot (the run resumed in a fresh VM) it deselects every test the log
already has a verdict for, and the tests the host recorded as having crashed the VM.

Log lines: {"session": fingerprint}, {"start": nodeid}, {"report": serialized TestReport},
{"crash": nodeid, "what", "message", "tail"} (written by the host), {"suspects": [nodeid, ...]}.
"""

import json
import os
import threading
import time
from pathlib import Path

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
        f.write(json.dumps(entry, default=str) + "\n")
        f.flush()
        os.fsync(f.fileno())  # the VM may die on the next instruction


def _log_path():
    return Path(os.environ[ENV]) if os.environ.get(ENV) else None


def _controller(config) -> bool:
    return not hasattr(config, "workerinput")  # pytest-xdist workers have it


def pytest_collection_modifyitems(session, config, items):
    """pytest hook: deselect the tests the progress log already has a verdict for (a resumed run
    in a fresh VM), reporting them as deselected."""
    path = _log_path()
    if path is None:
        return
    skip = finished(read(path))
    if not skip:
        return
    kept = [i for i in items if i.nodeid not in skip]
    deselected = [i for i in items if i.nodeid in skip]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = kept


def pytest_sessionstart(session):
    """pytest hook: log the session's start with the VM kernel's fingerprint (controller only)."""
    path = _log_path()
    if path is not None and _controller(session.config):
        from ..plugin import FINGERPRINT_KEY

        append(path, {"session": session.config.stash.get(FINGERPRINT_KEY, {})})


def pytest_runtest_logstart(nodeid, location):
    """pytest hook: log that test `nodeid` started, so a VM that dies now names it in flight."""
    path = _log_path()
    if path is not None and _controller(_CONFIG[0]):
        _RUNNING[nodeid] = time.monotonic()
        append(path, {"start": nodeid})


def pytest_runtest_logreport(report):
    """pytest hook: log each phase report of a test in pytest's serialized form (as pytest-xdist
    sends them), from which resume.py rebuilds the reports after a crash."""
    path = _log_path()
    if path is not None and _controller(_CONFIG[0]):
        config = _CONFIG[0]
        append(path, {"report": config.hook.pytest_report_to_serializable(config=config, report=report)})
        if report.when == "teardown":
            _RUNNING.pop(report.nodeid, None)


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
    """pytest hook: remember the config (the log hooks get none) and, on the controller of a run
    with a progress log, start the console heartbeat thread (KVMTEST_VM_TEST_LIMIT seconds per test,
    default 1800)."""
    _CONFIG[0] = config
    if _log_path() is not None and _controller(config):
        limit = float(os.environ.get(HEARTBEAT_LIMIT_ENV) or 1800)
        threading.Thread(target=_heartbeat, args=(limit,), name="kvmtest-vm-heartbeat", daemon=True).start()
