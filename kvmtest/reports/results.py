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


class ReportError(ValueError):
    """A report file that cannot be read; names the file and what is wrong."""


def _status(case: ET.Element) -> tuple[str, str, str]:
    for tag, status in (("failure", "failed"), ("error", "error"), ("skipped", "skipped")):
        el = case.find(tag)
        if el is not None:
            text = (el.text or "").strip()
            message = el.get("message") or (text.splitlines()[0] if text else "")
            if status == "skipped" and (message or "").startswith("xfail"):
                return "xfailed", message, text
            if status == "failed" and (message or "").startswith(("XPASS", "[XPASS")) and "(strict)" not in message:
                return "xpassed", message, text  # older kvmtest files wrote a non-strict XPASS as a failure
            return status, message or "", text
    return case.get("status") if case.get("status") in ("xfailed", "xpassed") else "passed", "", ""


def _props_from_stdout(case: ET.Element) -> tuple:
    out = case.findtext("system-out") or ""
    props = []
    for line in out.splitlines():
        m = re.match(r"^(cpu_mode|known_issue|regression_commit|regression_cve|mmu_mode): (.*)$", line)
        if m:
            props.append((m.group(1), m.group(2)))
    return tuple(props)


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
        host = props.get("kvmtest.host") or suite.get("hostname") or ""
        kernel = props.get("kvmtest.kernel.release")
        host_label = f"{host} ({kernel})" if kernel else host
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
        else:
            raise ReportError(f"{p}: no such file or directory")
    return results


# --- KTAP / TAP -------------------------------------------------------------------------------

_TAP_LINE = re.compile(r"^(?P<indent>\s*)(?P<ok>not ok|ok)\s+(?P<num>\d+)\s*(?:-\s*)?(?P<name>[^#]*?)\s*"
                       r"(?:#\s*(?P<directive>\w+)\b\s*(?P<reason>.*))?$")
_SUBTEST = re.compile(r"^\s*#\s*Subtest:\s*(?P<name>.+?)\s*$")


def read_tap(text: str, source: str = "<tap>", default_suite: str = "tap") -> list[Result]:
    """KTAP v1 (kselftest, kvmtest) and TAP 13 (kvm-unit-tests' run_tests.sh -t) results.

    A result indented under a '# Subtest: NAME' line belongs to suite NAME (nested suites join
    with '::'); the parent's own line that closes the subtest is not a test of its own.
    """
    return _nest(text, source, default_suite)


def _nest(text: str, source: str, default_suite: str) -> list[Result]:
    results = []
    suites: dict[int, str] = {}  # indent of a '# Subtest:' line -> its name
    for raw in text.splitlines():
        indent = len(raw.expandtabs(4)) - len(raw.expandtabs(4).lstrip())
        m = _SUBTEST.match(raw)
        if m:
            for deeper in [k for k in suites if k >= indent]:
                del suites[deeper]
            suites[indent] = m.group("name")
            continue
        m = _TAP_LINE.match(raw.rstrip())
        if not m:
            continue
        name = m.group("name").strip() or f"test {m.group('num')}"
        closing = [k for k in suites if k >= indent and suites[k] == name]
        if closing:  # the parent's own result line: its children are the tests
            for k in [k for k in suites if k >= min(closing)]:
                del suites[k]
            continue
        owners = [suites[k] for k in sorted(suites) if k <= indent]
        directive = (m.group("directive") or "").upper()
        reason = (m.group("reason") or "").strip()
        status = {"SKIP": "skipped", "XFAIL": "xfailed", "TODO": "xfailed"}.get(directive)
        if status is None:
            status = "failed" if m.group("ok") != "ok" or directive in ("TIMEOUT", "ERROR") else "passed"
        results.append(Result("::".join(owners) or default_suite, name, status,
                              f"{directive} {reason}".strip(), "", 0.0, "", source))
    return results
