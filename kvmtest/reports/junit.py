"""kvmtest's JUnit writer, run in the pytest controller so it works under pytest-xdist.

Stable classname + name (no counters, no host data), the failure message repeated in the
element body (GitLab reads only the body), the host fingerprint in the suite's properties
and in each testcase's system-out, followed by every diagnostic section of the test (guest
state, ioctl trace, kernel log, captured output). Only what Jenkins' junit-10.xsd allows is
written (no `status` on <testcase>, no `disabled` on <testsuite(s)>, times as plain decimals);
skips and xfails are written as pytest writes them (`<skipped type="pytest.skip">`,
`<skipped type="pytest.xfail">`); a non-strict XPASS passes, a strict one is a failure.
"""

import datetime
import os
import re
import socket
import xml.etree.ElementTree as ET
from pathlib import Path

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
    text = _longrepr_text(report).strip()
    return text.splitlines()[-1] if text else ""


def _skip_reason(report) -> str:
    # pytest's longrepr says "Skipped: why"; the reason is "why" (as pytest's own JUnit writes it)
    return _longrepr_text(report).strip().removeprefix("Skipped: ")


def record(outcomes: dict, report) -> None:
    """Fold one phase report (setup/call/teardown) into the test's outcome.

    Sections accumulate over the phases: the call phase's diagnostics (guest state, trace,
    kernel log) stay when the teardown report arrives with its own captured output.
    """
    o = outcomes.setdefault(report.nodeid, Outcome(report.nodeid))
    o.duration += report.duration
    o.properties = list(report.user_properties)
    for section in report.sections:
        if tuple(section) not in o.sections:
            o.sections.append(tuple(section))
    xfail = getattr(report, "wasxfail", None)
    if xfail is not None:
        xfail = xfail.removeprefix("reason: ")  # pytest.xfail("why") says "reason: why"
    if report.when == "call" and report.passed and xfail is not None:
        o.status, o.message = "xpassed", f"XPASS: {xfail}"
    elif report.skipped and xfail is not None:
        o.status, o.message, o.details = "xfailed", xfail, _longrepr_text(report)
    elif report.skipped:
        o.status, o.message = "skipped", _skip_reason(report)
    elif report.failed:
        if report.when == "call":
            # a strict XPASS fails the call with the longrepr "[XPASS(strict)] reason"
            o.status, o.message, o.details = "failed", _message(report) or "failed", _longrepr_text(report)
        elif o.status in ("failed", "error"):  # a teardown error after a failure: keep both
            o.details += f"\n\nerror in {report.when}: {_message(report)}\n{_longrepr_text(report)}"
        else:
            o.status = "error"
            o.message = f"error in {report.when}: {_message(report)}"
            o.details = _longrepr_text(report)


# XML 1.0 allows tab, LF, CR and from U+0020 on, less surrogates and U+FFFE/U+FFFF: a guest's bytes
# or a kernel line may carry anything else, which would make the whole file unreadable.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def xml_text(text: str) -> str:
    return _NOT_XML.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def _seconds(value: float) -> str:
    # junit-10.xsd's SUREFIRE_TIME is digits and a fraction: never '1e-06', never negative
    return f"{max(value, 0.0):.3f}"


_ELEMENT = {"failed": "failure", "error": "error", "skipped": "skipped", "xfailed": "skipped"}
_TYPE = {"skipped": "pytest.skip", "xfailed": "pytest.xfail"}


def testcase(classname: str, name: str, status: str, message: str = "", details: str = "", time: float = 0.0,
             stdout: str = "") -> ET.Element:
    """One <testcase>: its outcome as the element pytest writes (none for passed and xpassed)."""
    case = ET.Element("testcase", classname=xml_text(classname), name=xml_text(name), time=_seconds(time))
    tag = _ELEMENT.get(status)
    if tag:
        result = ET.SubElement(case, tag, message=xml_text(message or status))
        if status in _TYPE:
            result.set("type", _TYPE[status])
        body = details if details.strip().startswith(message) else f"{message}\n\n{details}"
        result.text = xml_text(body.strip() or status)  # GitLab shows only the body: the message leads it
    if stdout:
        ET.SubElement(case, "system-out").text = xml_text(stdout)
    return case


def testsuite(name: str, cases: list[ET.Element], *, hostname: str | None = None, properties: dict | None = None,
              timestamp: str | None = None) -> ET.Element:
    """A <testsuite> with the counts junit-10.xsd requires (tests, failures, errors) and skipped."""
    def count(tag):
        return sum(1 for c in cases if c.find(tag) is not None)

    suite = ET.Element("testsuite", name=xml_text(name), tests=str(len(cases)), failures=str(count("failure")),
                       errors=str(count("error")), skipped=str(count("skipped")),
                       time=_seconds(sum(float(c.get("time", "0")) for c in cases)))
    if timestamp:
        suite.set("timestamp", timestamp)
    if hostname:
        suite.set("hostname", xml_text(hostname))
    if properties:
        props = ET.SubElement(suite, "properties")
        for key, value in properties.items():
            ET.SubElement(props, "property", name=xml_text(str(key)), value=xml_text(str(value)))
    suite.extend(cases)
    return suite


def build_suite(outcomes: dict, fp: dict, name: str | None = None) -> ET.Element:
    short = fpmod.short(fp)
    cases = []
    for nodeid in sorted(outcomes):
        o = outcomes[nodeid]
        classname, test = split_nodeid(nodeid)
        stdout = f"host: {short}" + "".join(f"\n{k}: {v}" for k, v in o.properties)
        if o.status == "xpassed":  # non-strict: pytest passes it, so the file must too; the note stays
            stdout += f"\n{o.message}"
        stdout += "".join(f"\n--- {title} ---\n{text}" for title, text in o.sections)
        cases.append(testcase(classname, test, o.status, o.message, o.details, o.duration, stdout))
    return testsuite(name or f"kvmtest@{fp.get('host', socket.gethostname())}", cases, hostname=fp.get("host"),
                     timestamp=datetime.datetime.now().isoformat(timespec="seconds"),
                     properties=fpmod.flat_properties(fp))


def write(path: str | Path, suites: list[ET.Element]) -> None:
    """<testsuites> of the given suites, with the totals junit-10.xsd allows there, written atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # testsuite() sets every one of these; "0" only gives the type checker its str
    root = ET.Element("testsuites", tests=str(sum(int(s.get("tests", "0")) for s in suites)),
                      failures=str(sum(int(s.get("failures", "0")) for s in suites)),
                      errors=str(sum(int(s.get("errors", "0")) for s in suites)),
                      time=_seconds(sum(float(s.get("time", "0")) for s in suites)))
    root.extend(suites)
    ET.indent(root)
    tmp = path.with_suffix(path.suffix + f".{os.getpid()}.tmp")
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
                              tuple(o.properties), tuple(o.sections)))
    return results


def suite_from_results(results, name: str, hostname: str, properties: dict) -> ET.Element:
    """A <testsuite> from Result records (kvmtest merge, kvmtest import-tap)."""
    cases = []
    for r in results:
        stdout = "\n".join(f"{k}: {v}" for k, v in r.properties)
        if r.status not in _ELEMENT:  # passed, xpassed: no element to carry the note or the diagnostics
            stdout = "\n".join(filter(None, [stdout, r.message, r.details]))
        cases.append(testcase(r.classname, r.name, r.status, r.message, r.details, r.time, stdout))
    return testsuite(name, cases, hostname=hostname or None, properties=properties or None)
