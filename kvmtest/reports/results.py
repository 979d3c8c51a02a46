"""One model of a test result, read from JUnit files (ours or anyone's) and KTAP/TAP output.

Statuses: passed, failed, error, skipped, xfailed, xpassed. `xpassed` is a non-strict XPASS (a
known issue the host did not show on a build its entry was never verified on, or an intermittent
one): pytest passes it, and so does every report; a strict XPASS is `failed`. Each result carries the host it
ran on (from kvmtest's suite properties when present) and the file it came from.
"""

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

RAN = ("passed", "failed", "error", "xfailed", "xpassed")
BAD = ("failed", "error")


@dataclass(frozen=True)
class Result:
    classname: str
    name: str
    status: str
    message: str = ""
    details: str = ""
    time: float = 0.0
    host: str = ""
    source: str = ""
    properties: tuple = field(default=(), compare=False)
    sections: tuple = field(default=(), compare=False)  # (title, text): guest state, ioctl trace, kernel log

    @property
    def id(self) -> str:
        return f"{self.classname}::{self.name}" if self.classname else self.name

    @property
    def area(self) -> str:
        """suites.memory.test_x -> memory; anything else -> its first dotted part."""
        parts = self.classname.split(".")
        if len(parts) > 1 and parts[0] == "suites":
            return parts[1]
        return parts[0] if parts and parts[0] else "other"

    @property
    def mode(self) -> str:
        for key, value in self.properties:
            if key == "cpu_mode":
                return value
        return "-"

    @property
    def regression(self) -> str:
        """The CVE and kernel fix the test pins (its `regression` marker), e.g. "CVE-2021-38198, fixed
        by b1bd5cba3306"; "" for a test without one."""
        props = dict(self.properties)
        cve, commit = props.get("regression_cve", ""), props.get("regression_commit", "")
        fix = f"fixed by {commit[:12]}" if commit else ""
        return ", ".join(p for p in (cve, fix) if p)


class ReportError(ValueError):
    """A report file that cannot be read; names the file and what is wrong."""


def _status(case: ET.Element) -> tuple[str, str, str]:
    for tag, status in (("failure", "failed"), ("error", "error"), ("skipped", "skipped")):
        el = case.find(tag)
        if el is not None:
            text = (el.text or "").strip()
            message = el.get("message") or (text.splitlines()[0] if text else "")
            if status == "skipped" and (el.get("type") == "pytest.xfail" or message.startswith("xfail")):
                return "xfailed", message.removeprefix("xfail: "), text  # "xfail: " from older kvmtest files
            if status == "failed" and message.startswith(("XPASS", "[XPASS")) and "(strict)" not in message:
                return "xpassed", message, text  # older kvmtest files wrote a non-strict XPASS as a failure
            return status, message, text
    older = case.get("status")  # older kvmtest files
    if older in ("xfailed", "xpassed"):
        return older, "", ""
    # a non-strict XPASS passes; kvmtest notes it in system-out, before the test's own sections ("--- title ---")
    head = (case.findtext("system-out") or "").split("\n--- ", 1)[0]
    note = next((line for line in head.splitlines() if line.startswith("XPASS: ")), "")
    return ("xpassed", note, "") if note else ("passed", "", "")


def _props_from_stdout(case: ET.Element) -> tuple:
    out = case.findtext("system-out") or ""
    props = []
    for line in out.splitlines():
        m = re.match(r"^(cpu_mode|known_issue|regression_commit|regression_cve|mmu_mode): (.*)$", line)
        if m:
            props.append((m.group(1), m.group(2)))
    return tuple(props)


def run_host(host: str, kernel: str | None) -> str:
    """The host a result ran on as every report names it, "host (kernel release)": the same label for
    a run read back from its JUnit file and for the run being recorded (its HTML baseline comparison)."""
    return f"{host} ({kernel})" if kernel else host


def read_junit(path: str | Path) -> list[Result]:
    path = Path(path)
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as e:
        raise ReportError(f"{path}: not a readable JUnit XML file: {e}") from None
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    if root.tag not in ("testsuite", "testsuites"):
        raise ReportError(f"{path}: root element <{root.tag}> is neither <testsuites> nor <testsuite>")
    results = []
    for suite in suites:
        props = {p.get("name"): p.get("value") for p in suite.findall("properties/property")}
        host_label = run_host(props.get("kvmtest.host") or suite.get("hostname") or "",
                              props.get("kvmtest.kernel.release"))
        for case in suite.iter("testcase"):
            status, message, text = _status(case)
            results.append(Result(case.get("classname", ""), case.get("name", ""), status, message, text,
                                  float(case.get("time") or 0), host_label, str(path), _props_from_stdout(case)))
    return results


def read_any(paths) -> list[Result]:
    """JUnit files, or directories of them (*.xml, recursively)."""
    results = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            files = sorted(p.rglob("*.xml"))
            if not files:
                raise ReportError(f"{p}: no *.xml JUnit files in this directory")
            for f in files:
                results += read_junit(f)
        elif p.is_file():
            results += read_junit(p)
        elif p.exists():  # /dev/null, a FIFO: there, but no report
            raise ReportError(f"{p}: not a regular file or directory")
        else:
            raise ReportError(f"{p}: no such file or directory")
    return results


# --- KTAP / TAP ---------------------------------------------------------------------------------


def read_tap(text: str, source: str = "<tap>", default_suite: str = "tap") -> list[Result]:
    """KTAP v1 (kselftest, KUnit, kvmtest) and TAP 13 (kvm-unit-tests) results: see reports.tap_import."""
    from .tap_import import read_tap as read

    return read(text, source, default_suite)
