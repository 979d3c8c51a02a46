"""What JUnit consumers accept, written down from their specifications (no KVM needed).

Jenkins (xunit plugin, junit-10.xsd): which elements and attributes may appear where, which
attributes are required, and the form of a suite's time (SUREFIRE_TIME: digits, optional
thousands commas, an optional fraction; no exponent, no sign). GitLab (docs "Unit test reports",
"JUnit XML format specification"): a test is keyed by classname and name, and a duplicate is
dropped; failure, error and skipped are read from the element's content only; time is seconds.
"""

import re
import xml.etree.ElementTree as ET

# junit-10.xsd: element -> (required attributes, allowed attributes, allowed child elements)
_RESULT = (set(), {"type", "message"}, set())
_RERUN = ({"type"}, {"type", "message"}, {"stackTrace", "system-out", "system-err"})
JUNIT10 = {
    "testsuites": (set(), {"name", "time", "tests", "failures", "errors"}, {"testsuite"}),
    "testsuite": ({"name", "tests", "failures", "errors"},
                  {"name", "tests", "failures", "errors", "group", "time", "skipped", "timestamp", "hostname", "id",
                   "package", "file", "log", "url"},
                  {"testsuite", "properties", "testcase", "system-out", "system-err"}),
    "properties": (set(), set(), {"property"}),
    "property": ({"name", "value"}, {"name", "value"}, set()),
    "testcase": ({"name"}, {"name", "time", "classname", "group"},
                 {"skipped", "error", "failure", "rerunFailure", "rerunError", "flakyFailure", "flakyError",
                  "system-out", "system-err"}),
    "failure": _RESULT, "error": _RESULT, "skipped": _RESULT,
    "rerunFailure": _RERUN, "rerunError": _RERUN, "flakyFailure": _RERUN, "flakyError": _RERUN,
    "system-out": (set(), set(), set()), "system-err": (set(), set(), set()), "stackTrace": (set(), set(), set()),
}
SUREFIRE_TIME = re.compile(r"(([0-9]{0,3},)*[0-9]{3}|[0-9]{0,3})*(\.[0-9]*)?")


def jenkins_problems(root: ET.Element) -> list[str]:
    """Every place the document breaks junit-10.xsd (an empty list: Jenkins' xunit accepts it)."""
    problems = []
    if root.tag not in ("testsuites", "testsuite"):
        return [f"root element <{root.tag}>"]

    def walk(el, where):
        rule = JUNIT10.get(el.tag)
        if rule is None:
            problems.append(f"{where}: element <{el.tag}> is not in junit-10.xsd")
            return
        required, allowed, children = rule
        here = f"{where}/{el.tag}" + (f"[{el.get('name')}]" if el.get("name") else "")
        problems.extend(f"{here}: attribute {a!r} not allowed" for a in sorted(set(el.attrib) - allowed))
        problems.extend(f"{here}: required attribute {a!r} missing" for a in sorted(required - set(el.attrib)))
        if el.tag in ("testsuites", "testsuite") and "time" in el.attrib \
                and not SUREFIRE_TIME.fullmatch(el.get("time")):
            problems.append(f"{here}: time={el.get('time')!r} is not a SUREFIRE_TIME")
        for child in el:
            if child.tag not in children:
                problems.append(f"{here}: <{child.tag}> not allowed inside <{el.tag}>")
            walk(child, here)

    walk(root, "")
    return problems


def gitlab_problems(root: ET.Element) -> list[str]:
    """What GitLab would lose or misread: duplicate keys, results without content, times that are not seconds."""
    problems, seen = [], set()
    for case in root.iter("testcase"):
        key = (case.get("classname", ""), case.get("name"))
        if key in seen:
            problems.append(f"{key}: duplicate classname+name (GitLab keeps only the first)")
        seen.add(key)
        try:
            if float(case.get("time", "0")) < 0:
                problems.append(f"{key}: negative time")
        except ValueError:
            problems.append(f"{key}: time={case.get('time')!r} is not a number of seconds")
        for tag in ("failure", "error", "skipped"):
            el = case.find(tag)
            if el is None:
                continue
            text = (el.text or "").strip()
            if not text:
                problems.append(f"{key}: <{tag}> without content (GitLab shows only the content)")
            elif el.get("message") and el.get("message") not in text:
                problems.append(f"{key}: <{tag}> message is not in its content (GitLab shows only the content)")
    return problems
