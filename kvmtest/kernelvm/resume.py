"""After a VM dies mid-run: name the test that killed it, and rebuild one report from every boot.

The progress log (progress.py) holds each finished test's pytest reports from every boot of one
configuration. A test the VM died in becomes an ERROR naming what happened (panic, oops, QEMU
abort, stall) with the last console lines; the reports are then written from the log as the
in-VM recorder would have written them.
"""

from pathlib import Path

from . import progress

ERROR_TEXT = "the VM died while this test ran; the run went on in a freshly booted VM"
UNRUN_TEXT = ("no result: a VM of this configuration collected or selected this test, and no session of any "
              "VM reported it (the collection changed during the run, or a session ended before reaching it)")


def crash_outcome(entry: dict):
    """The JUnit outcome (reports.junit.Outcome) of the test a logged crash `entry` names: an
    error with what happened and the last console lines, tagged with the `vm_crash` property."""
    from ..reports.junit import Outcome

    o = Outcome(entry["crash"])
    o.status = "error"
    o.message = f"{entry['message']} ({ERROR_TEXT})"
    o.details = "\n".join([o.message, "", "last console lines:", *entry.get("tail", [])])
    o.properties = [("vm_crash", entry["what"])]
    return o


def outcomes(entries: list[dict]) -> dict:
    """nodeid -> reports.junit.Outcome, from the logged reports and the recorded crashes."""
    import pytest

    from ..reports import junit

    out: dict = {}
    for e in entries:
        if "report" in e:
            report = pytest.TestReport._from_json(e["report"])  # what pytest-xdist's controller does too
            junit.record(out, report)
        elif "crash" in e:
            out[e["crash"]] = crash_outcome(e)
    for nodeid in sorted(progress.expected(entries)):  # the logs of every VM of the configuration
        if nodeid not in out:  # never silently missing from the report
            o = junit.Outcome(nodeid)
            o.status, o.message, o.details = "error", UNRUN_TEXT, UNRUN_TEXT
            out[nodeid] = o
    return out


def fingerprint(entries: list[dict]) -> dict:
    """The VM's fingerprint from the last boot that got as far as pytest."""
    fps = [e["session"] for e in entries if e.get("session")]
    return fps[-1] if fps else {}


def write_reports(entries: list[dict], paths: dict[str, Path], baseline=()) -> list:
    """JUnit, KTAP and HTML from the log, like reports.recorder does at the end of a session."""
    from .. import fingerprint as fpmod
    from ..reports import html as html_report
    from ..reports import junit, ktap

    fp = fingerprint(entries) or {"host": "kvmtest-vm", "kernel": {"release": "unknown"}}
    outs = outcomes(entries)
    junit.write(paths["junit"], [junit.build_suite(outs, fp)])
    from ..reports.results import run_host

    # the host label read_junit gives a file, so a baseline from the same host compares as one
    results = junit.to_results(outs, run_host(fp.get("host", ""), (fp.get("kernel") or {}).get("release")))
    title = fpmod.short(fp) if fp.get("cpu") else fp.get("host", "")
    paths["ktap"].write_text(ktap.render(results, [f"kvmtest on {title}"]))
    comparison = None
    if baseline:
        from ..reports.compare import compare
        from ..reports.results import read_any

        comparison = compare(read_any(baseline), results)
    paths["html"].write_text(html_report.render(results, fp, comparison, title=f"kvmtest: {title}"))
    return results


def exit_code(results) -> int:
    """pytest's verdict for the rebuilt run: 1 when anything unexpected failed, else 0."""
    bad = [r for r in results if r.status in ("failed", "error")
           or (r.status == "xpassed" and r.message.startswith("XPASS(strict)"))]
    return 1 if bad else 0


def record_crash(log: Path, nodeid: str, what: str, message: str, tail: list[str]) -> None:
    """Log in progress log `log` that test `nodeid` killed the VM: `what` happened (console event
    kind), `message`, and the console's last lines `tail`. A resumed run skips the test."""
    progress.append(log, {"crash": nodeid, "what": what, "message": message, "tail": tail})
