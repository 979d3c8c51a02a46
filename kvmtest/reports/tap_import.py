"""KTAP v1 (Documentation/dev-tools/ktap.rst: kselftest, KUnit, kvmtest) and TAP 13 (kvm-unit-tests'
run_tests.sh -t) into Result records.

Nesting follows the indentation (KTAP: two spaces a level): a result line that closes a block of
deeper lines is the parent test's own result, not a test; its subtests are the tests, in a suite
named by a '# Subtest:' line or else by the parent's description. What a crashed run leaves out is
a failure: a plan (`1..N`) with fewer results than it announced yields a failed test for each
missing one, and `Bail out!` is an error. Diagnostic lines ('# ...', and unknown lines, which
ktap.rst lets a parser keep as diagnostics) before a result belong to that test: they become its
details, and the reason of a failure or skip without one of its own. A name that is a kvmtest test
id ('suites.smoke.test_smoke::test_x[long64]', as kvmtest's KTAP writes it) keeps its classname.
"""

import re
from dataclasses import dataclass, field

from .results import Result

MAX_MISSING_LISTED = 1000  # missing tests of a short plan listed one by one; more are one failure

_VERSION = re.compile(r"^(?:K?TAP) version \d+$")
_PLAN = re.compile(r"^1\.\.(\d+)\s*(?:#\s*(.*))?$")
# the number is optional in TAP 13 but every producer kvmtest reads writes it (KTAP requires it): requiring
# it keeps a console line such as "ok, retrying" from counting as a result
_RESULT = re.compile(r"^(?P<ok>not ok|ok) (?P<num>\d+)\b\s*(?:-\s+)?(?P<name>[^#]*?)\s*(?:#\s*(?P<rest>.*))?$")
_SUBTEST = re.compile(r"^#\s*Subtest:\s*(?P<name>.+?)\s*$")
_BAIL = re.compile(r"^Bail out!\s*(?P<reason>.*)$")
# TAP 13 takes any word starting with SKIP ("skipped") and TODO case-insensitively; KTAP adds XFAIL,
# TIMEOUT and ERROR.
_DIRECTIVE = re.compile(r"^(?P<word>skip\S*|todo|xfail|timeout|error)\b[:\s]*(?P<reason>.*)$", re.IGNORECASE)
_KVMTEST_ID = re.compile(r"^(?P<classname>[\w.]+)::(?P<name>\S.*)$")


@dataclass
class _Test:
    owners: list          # suite names from the outermost inward
    name: str
    status: str
    message: str = ""
    details: str = ""


@dataclass
class _Level:
    indent: int
    name: str = ""
    pending_name: str = ""   # a '# Subtest:' line at this level's indent names the next deeper block
    plan: int | None = None
    skip_all: str | None = None
    count: int = 0           # result lines at this level
    diags: list = field(default_factory=list)
    tests: list = field(default_factory=list)
    child: "_Level | None" = None  # a closed deeper block waiting for its parent's result line


def _diag_text(line: str) -> str:
    return line[1:].strip() if line.startswith("#") else line.strip()


def _outcome(ok: bool, rest: str, diags: list[str]) -> tuple[str, str]:
    last = next((d for d in reversed(diags) if d), "")
    m = _DIRECTIVE.match(rest)
    if m:
        word, reason = m.group("word").upper(), m.group("reason").strip()
        if word.startswith("SKIP"):
            return "skipped", reason or last
        if word == "TODO":
            return ("xpassed" if ok else "xfailed"), reason or last
        if word == "XFAIL":
            return "xfailed", reason or last
        if word == "TIMEOUT":
            return "failed", f"TIMEOUT {reason}".strip()
        return "error", reason or last
    if ok:
        # KTAP has no XPASS directive: kvmtest writes a non-strict XPASS as "# XPASS: ..." before "ok"
        return ("xpassed", last) if last.startswith("XPASS") else ("passed", rest)
    return "failed", rest or last


class _Parser:
    def __init__(self):
        self.stack: list[_Level] = []
        self.bailed: str | None = None

    def feed(self, raw: str) -> bool:
        """One line; False once the run bailed out (nothing after 'Bail out!' counts)."""
        text = raw.rstrip()
        body = text.lstrip()
        if not body:
            return True
        indent = len(text.expandtabs(8)) - len(body.expandtabs(8))
        if not self.stack:
            if not (_VERSION.match(body) or _PLAN.match(body) or _RESULT.match(body)):
                return True  # anything before the output starts (a console's earlier lines)
            self.stack.append(_Level(indent))
        top = self.stack[-1]
        bail = _BAIL.match(body)
        if bail:
            self.bailed = bail.group("reason") or "no reason given"
            self.stack[0].tests.append(_Test([], "Bail out!", "error", f"Bail out! {self.bailed}".strip(),
                                             "\n".join(top.diags)))
            return False
        if _VERSION.match(body):
            if indent > top.indent:
                self._push(indent)
            return True
        m = _SUBTEST.match(body)
        if m:
            if indent > top.indent:
                self._push(indent).name = m.group("name")
            elif indent == top.indent and top is not self.stack[0] and not top.count and not top.name:
                top.name = m.group("name")
            else:
                top.pending_name = m.group("name")
            return True
        m = _PLAN.match(body)
        if m:
            level = self._push(indent) if indent > top.indent else self._close_to(indent)
            level.plan = int(m.group(1))
            d = _DIRECTIVE.match(m.group(2) or "")
            if d and d.group("word").upper().startswith("SKIP"):
                level.skip_all = d.group("reason").strip()
            return True
        m = _RESULT.match(body)
        if m:
            level = self._push(indent) if indent > top.indent else self._close_to(indent)
            self._result(level, m)
            return True
        # a diagnostic or unknown line closes nothing (ktap.rst: unknown lines may be indented or not);
        # it belongs to the innermost open block it is not shallower than
        level = next((lv for lv in reversed(self.stack) if lv.indent <= indent), self.stack[0])
        level.diags.append(_diag_text(body))
        return True

    def _push(self, indent: int) -> _Level:
        parent = self.stack[-1]
        level = _Level(indent, name=parent.pending_name)
        parent.pending_name = ""
        self.stack.append(level)
        return level

    def _close_to(self, indent: int) -> _Level:
        """Close every block deeper than indent; the innermost closed one waits for its parent's line."""
        while len(self.stack) > 1 and self.stack[-1].indent > indent:
            closed = self.stack.pop()
            self._orphan(closed)
            self._finish(closed)
            parent = self.stack[-1]
            self._orphan(parent)
            parent.child = closed
        return self.stack[-1]

    def _adopt(self, parent: _Level, child: _Level, name: str) -> None:
        for t in child.tests:
            t.owners.insert(0, child.name or name)
        parent.tests += child.tests

    def _orphan(self, level: _Level) -> None:
        """A closed block whose parent's result line never came: its tests count, the parent failed."""
        child, level.child = level.child, None
        if child is None:
            return
        name = child.name or f"test {level.count + 1}"
        self._adopt(level, child, name)
        level.count += 1
        level.tests.append(_Test([], name, "failed", "no result line: the output ended or moved on inside this "
                                 f"test, after {len(child.tests)} subtest results"))

    def _result(self, level: _Level, m) -> None:
        ok = m.group("ok") == "ok"
        name = m.group("name").strip() or f"test {m.group('num')}"
        status, message = _outcome(ok, (m.group("rest") or "").strip(), level.diags)
        details = "\n".join(level.diags)
        level.diags = []
        if m.group("num") and int(m.group("num")) != level.count + 1:
            # ktap.rst: "the test number, starting at 1 and increasing by 1": a gap, a repeat or a
            # reordering means results were lost or mixed up, which is no pass
            level.tests.append(_Test([], f"{name} (numbering)", "error",
                                     f"test number {m.group('num')} where {level.count + 1} was due"))
        level.count += 1
        child, level.child = level.child, None
        if child is None:
            level.tests.append(_Test([], name, status, message, details))
            return
        # the parent's own line: its subtests are the tests; it counts only where it says more than they do
        bad = any(t.status in ("failed", "error") for t in child.tests)
        self._adopt(level, child, name)
        owners = [child.name or name]
        if status in ("failed", "error") and not bad:
            level.tests.append(_Test(owners, name, status, message or "the parent test failed, none of its "
                                     f"{len(child.tests)} subtests did", details))
        elif status == "skipped" and not child.tests:
            level.tests.append(_Test(owners, name, status, message, details))

    def _finish(self, level: _Level) -> None:
        """A block is over: what its plan announced and never came is a failure (a crash, a bail-out)."""
        if level.skip_all is not None and not level.count:
            level.tests.append(_Test([], level.name or "all tests", "skipped", level.skip_all or "1..0"))
            return
        if level.plan is None:
            return
        why = f"after 'Bail out! {self.bailed}'" if self.bailed else "the output ended or moved on"
        missing = level.plan - level.count
        if missing > MAX_MISSING_LISTED:  # one failure for them all: a huge plan must not become a huge report
            level.tests.append(_Test([], f"tests {level.count + 1}-{level.plan}", "failed",
                                     f"missing: the plan 1..{level.plan} announced {level.plan} tests, "
                                     f"{level.count} reported ({why})"))
            missing = 0
        for n in range(level.plan - missing + 1, level.plan + 1):
            level.tests.append(_Test([], f"test {n}", "failed",
                                     f"missing: the plan 1..{level.plan} announced {level.plan} tests, "
                                     f"{level.count} reported ({why})"))
        if level.count > level.plan:
            level.tests.append(_Test([], "plan", "error", f"{level.count} results, but the plan 1..{level.plan} "
                                     f"announced {level.plan}"))

    def finish(self) -> list[_Test]:
        if not self.stack:
            return []
        self._close_to(-1)  # every block inside the outermost
        root = self.stack[0]
        self._orphan(root)  # the input ended inside a subtest: its parent's line never came
        self._finish(root)
        return root.tests


def _unescape(text: str) -> str:
    return re.sub(r"%(25|23|0A|0D)", lambda m: chr(int(m.group(1), 16)), text)


def read_tap(text: str, source: str = "<tap>", default_suite: str = "tap") -> list[Result]:
    parser = _Parser()
    for line in text.splitlines():
        if not parser.feed(line):
            break
    results = []
    for t in parser.finish():
        classname, name = "::".join(t.owners) or default_suite, t.name
        m = _KVMTEST_ID.match(t.name)
        if m:  # kvmtest's KTAP escapes '%', '#' and newlines in its ids (reports.ktap)
            classname, name = m.group("classname"), _unescape(m.group("name"))
        results.append(Result(classname, name, t.status, t.message, t.details, 0.0, "", source))
    return results
