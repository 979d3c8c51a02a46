"""kvmtest's JUnit writer, run in the pytest controller so it works under pytest-xdist.

Stable classname + name (no counters, no host data), the failure message repeated in the
element body (GitLab reads only the body), the host fingerprint in the suite's properties
and in each testcase's system-out, xfail and skip reasons as text.
"""

import datetime
import os
import socket
import xml.etree.ElementTree as ET
from pathlib import Path

from junit_xml import TestCase, TestSuite, to_xml_report_string

from .. import fingerprint as fpmod


def split_nodeid(nodeid: str) -> tuple[str, str]:
    """'suites/smoke/test_smoke.py::TestX::test_y[long64]' -> ('suites.smoke.test_smoke.TestX', 'test_y[long64]')."""
    path, _, rest = nodeid.partition("::")
    module = path.removesuffix(".py").replace("/", ".")
    parts = rest.split("::") if rest else [path]
    return ".".join([module] + parts[:-1]), parts[-1]


class Outcome:
    def __init__(self, nodeid):
        self.nodeid = nodeid
        self.duration = 0.0
        self.status = "passed"
        self.message = ""
        self.details = ""
        self.properties = []
        self.sections = []


def _longrepr_text(report) -> str:
    lr = report.longrepr
    if lr is None:
        return ""
    if isinstance(lr, tuple) and len(lr) == 3:
        return lr[2]
    return str(lr)


def _message(report) -> str:
    crash = getattr(report.longrepr, "reprcrash", None)
    if crash is not None:
        return crash.message.splitlines()[0] if crash.message else ""
    return _longrepr_text(report).strip().splitlines()[-1] if _longrepr_text(report).strip() else ""


def record(outcomes: dict, report) -> None:
    """Fold one phase report (setup/call/teardown) into the test's outcome."""
    o = outcomes.setdefault(report.nodeid, Outcome(report.nodeid))
    o.duration += report.duration
    o.properties = list(report.user_properties)
    o.sections = list(report.sections)
    xfail = getattr(report, "wasxfail", None)
    if report.when == "call" and report.passed and xfail is not None:
        o.status, o.message = "xpassed", f"XPASS: {xfail}"
    elif report.skipped and xfail is not None:
        o.status, o.message, o.details = "xfailed", f"xfail: {xfail}", _longrepr_text(report)
    elif report.skipped:
        o.status, o.message = "skipped", _longrepr_text(report).strip()
    elif report.failed:
        if report.when == "call":
            o.status = "failed"
            o.message = _message(report) or "failed"
            if xfail is not None and "XPASS(strict)" in _longrepr_text(report):
                o.message = f"XPASS(strict): {xfail}"
        elif o.status != "failed":
            o.status = "error"
            o.message = f"error in {report.when}: {_message(report)}"
        o.details = _longrepr_text(report)


def build_suite(outcomes: dict, fp: dict, name: str | None = None) -> TestSuite:
    short = fpmod.short(fp)
    cases = []
    for nodeid in sorted(outcomes):
        o = outcomes[nodeid]
        classname, test = split_nodeid(nodeid)
        props = "".join(f"\n{k}: {v}" for k, v in o.properties)
        sections = "".join(f"\n--- {title} ---\n{text}" for title, text in o.sections)
        tc = TestCase(test, classname=classname, elapsed_sec=round(o.duration, 6),
                      stdout=f"host: {short}{props}{sections}", status=o.status)
        if o.status == "xpassed":  # non-strict: pytest passes it, so the file must too; the note stays
            tc.stdout += f"\n{o.message}"
        elif o.status == "failed":
            tc.add_failure_info(message=o.message, output=f"{o.message}\n\n{o.details}".strip())
        elif o.status == "error":
            tc.add_error_info(message=o.message, output=f"{o.message}\n\n{o.details}".strip())
        elif o.status in ("skipped", "xfailed"):
            tc.add_skipped_info(message=o.message, output=f"{o.message}\n\n{o.details}".strip())
        cases.append(tc)
    return TestSuite(name or f"kvmtest@{fp.get('host', socket.gethostname())}", cases,
                     hostname=fp.get("host"), timestamp=datetime.datetime.now().isoformat(timespec="seconds"),
                     properties=fpmod.flat_properties(fp))


def write(path: str | Path, suites: list[TestSuite]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + f".{os.getpid()}.tmp")
    # junit-xml's own prettyprint goes through xml.dom.minidom without importing it; indent with
    # ElementTree instead.
    root = ET.fromstring(to_xml_report_string(suites, prettyprint=False, encoding="utf-8"))
    ET.indent(root)
    tmp.write_bytes(ET.tostring(root, encoding="utf-8", xml_declaration=True))
    os.replace(tmp, path)


def to_results(outcomes: dict, host: str = "") -> list:
    """The recorded outcomes as reports.results.Result records (for KTAP, HTML, comparison)."""
    from .results import Result

    results = []
    for nodeid in sorted(outcomes):
        o = outcomes[nodeid]
        classname, name = split_nodeid(nodeid)
        results.append(Result(classname, name, o.status, o.message, o.details, o.duration, host, "",
                              tuple(o.properties)))
    return results


def suite_from_results(results, name: str, hostname: str, properties: dict) -> TestSuite:
    """A junit-xml TestSuite from Result records (kvmtest merge, kvmtest import-tap)."""
    cases = []
    for r in results:
        tc = TestCase(r.name, classname=r.classname, elapsed_sec=r.time, status=r.status,
                      stdout="\n".join(f"{k}: {v}" for k, v in r.properties) or None)
        body = f"{r.message}\n\n{r.details}".strip()
        if r.status == "failed":
            tc.add_failure_info(message=r.message or r.status, output=body or r.status)
        elif r.status == "error":
            tc.add_error_info(message=r.message or "error", output=body or "error")
        elif r.status in ("skipped", "xfailed"):
            tc.add_skipped_info(message=r.message or r.status, output=body or r.status)
        cases.append(tc)
    return TestSuite(name, cases, hostname=hostname or None, properties=properties or None)
