"""KTAP v1 output (Documentation/dev-tools/ktap.rst), nested by suite area, so kernel CI can
ingest kvmtest like a kselftest.

One subtest per area, indented two spaces (ktap.rst: "One level of indentation is two spaces"),
named by a '# Subtest:' line as KUnit does, its result line closing it. Each test's description is
its id (`suites.smoke.test_smoke::test_x[long64]`), so reading the file back gives the JUnit names.
A failure's reason goes in a diagnostic line directly before its `not ok` line (ktap.rst:
"diagnostic lines regarding a test are directly before the test result line"); directives SKIP,
XFAIL, TIMEOUT and ERROR carry theirs after '#'. KTAP has no XPASS directive: a non-strict XPASS
is `ok` with a '# XPASS: ...' diagnostic before it.
"""

from collections import defaultdict
from collections.abc import Sequence

from .results import Result

INDENT = "  "
MAX_REASON = 300


def _one_line(text: str) -> str:
    # a newline would end the line; a '#' inside a reason is content ('#GP'), kept
    return " ".join(text.split())


# ktap.rst: the description "can be any string of words (can't include #)", and a newline would end
# it: those are percent-escaped (and '%' itself), which reports.tap_import undoes for kvmtest's ids.
_ESCAPES = {"%": "%25", "#": "%23", "\n": "%0A", "\r": "%0D"}


def _description(text: str) -> str:
    return "".join(_ESCAPES.get(c, c) for c in text)


def _reason(r: Result) -> str:
    reason = _one_line(r.message).removeprefix("Skipped: ")  # pytest's prefix, in files of older kvmtest
    return reason if len(reason) <= MAX_REASON else reason[:MAX_REASON - 3] + "..."


def _test_lines(number: int, r: Result) -> list[str]:
    name = _description(r.id)
    reason = _reason(r)
    directive = ""
    diagnostics = []
    result = "ok"
    if r.status == "skipped":
        directive = f" # SKIP {reason}"
    elif r.status == "xfailed":
        directive = f" # XFAIL {reason}"
    elif r.status == "xpassed":
        diagnostics = [reason if reason.startswith("XPASS") else f"XPASS: {reason}"]
    elif r.status in ("failed", "error"):
        result = "not ok"
        if "GuestTimeout" in r.message or "still running after" in r.message:
            directive = f" # TIMEOUT {reason}"
        elif r.status == "error":
            directive = f" # ERROR {reason}"
        else:
            diagnostics = [reason or "failed"]
        if r.regression:  # a failing test that pins a fixed bug names the bug; the reason stays the last line
            diagnostics.insert(0, f"regression: {r.regression}")
    return [f"# {d}" for d in diagnostics] + [f"{result} {number} {name}{directive}".rstrip()]


def render(results: list[Result], header_comments: Sequence[str] = ()) -> str:
    areas: dict[str, list[Result]] = defaultdict(list)
    for r in sorted(results, key=lambda r: (r.area, r.id)):
        areas[r.area].append(r)
    # ktap.rst: "Plan lines follow version lines" (TAP 13 also wants the plan first or last)
    out = ["KTAP version 1", f"1..{len(areas)}"] + [f"# {_one_line(c)}" for c in header_comments]
    for number, (area, items) in enumerate(areas.items(), start=1):
        name = _description(area)
        out += [INDENT + line for line in ("KTAP version 1", f"# Subtest: {name}", f"1..{len(items)}")]
        for i, r in enumerate(items, start=1):
            out += [INDENT + line for line in _test_lines(i, r)]
        bad = sum(r.status in ("failed", "error") for r in items)
        if bad:
            out.append(f"# {name}: {bad} of {len(items)} tests failed")
        out.append(f"{'not ok' if bad else 'ok'} {number} {name}")
    return "\n".join(out) + "\n"
