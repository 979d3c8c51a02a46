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
from pathlib import Path

ENV = "KVMTEST_VM_PROGRESS"


def read(path: Path) -> list[dict]:
    """The log's entries; a line cut short by a dying VM is dropped."""
    entries = []
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
    with open(path, "a") as f:
        f.write(json.dumps(entry, default=str) + "\n")
        f.flush()
        os.fsync(f.fileno())  # the VM may die on the next instruction


def _log_path():
    return Path(os.environ[ENV]) if os.environ.get(ENV) else None


def _controller(config) -> bool:
    return not hasattr(config, "workerinput")  # pytest-xdist workers have it


def pytest_collection_modifyitems(session, config, items):
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
    path = _log_path()
    if path is not None and _controller(session.config):
        from ..plugin import FINGERPRINT_KEY

        append(path, {"session": session.config.stash.get(FINGERPRINT_KEY, {})})


def pytest_runtest_logstart(nodeid, location):
    path = _log_path()
    if path is not None and _controller(_CONFIG[0]):
        append(path, {"start": nodeid})


def pytest_runtest_logreport(report):
    path = _log_path()
    if path is not None and _controller(_CONFIG[0]):
        config = _CONFIG[0]
        append(path, {"report": config.hook.pytest_report_to_serializable(config=config, report=report)})


_CONFIG: list = [None]  # logstart/logreport hooks get no config argument


def pytest_configure(config):
    _CONFIG[0] = config
