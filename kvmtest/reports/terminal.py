"""kvmtest's terminal output: the short test summary (pytest's `-r` chars f, E, s, x, X) and one
line per test under pytest-xdist.

pytest's own summary puts a failure's reason after its test id on one line and cuts it at the
terminal width; kvmtest's ids are long (`test_x[long64-4k-leaf-ro-write-wp1--]`), so the reason
was often cut away entirely. Here the reason gets its own lines, uncut; skips are grouped by
reason (every missing CPU feature in one group, kvmtest.reports.skips) and xfails by their
reason (one known-issue entry each), each with its count, so 600 skips read as a few lines.
"""

from collections import Counter

import pytest

from .skips import group_skips

CHARS = "fEsxX"  # the -r chars rendered here; the others (p, P, w) stay pytest's
_REASON_LINES = 2


def _reason(report) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:  # a skip: (path, lineno, reason)
        return str(longrepr[2])
    crash = getattr(longrepr, "reprcrash", None)
    if crash is not None and crash.message:
        return crash.message
    text = str(longrepr or "").strip()
    return text.splitlines()[-1] if text else ""


def _indented(text: str) -> list[str]:
    """The reason's first lines, up to pytest's own assertion introspection (`assert x == y` and
    its diff, which the failure's section above shows in full)."""
    lines: list[str] = []
    for line in text.strip().splitlines():
        if line.startswith("assert ") or len(lines) == _REASON_LINES:
            break
        if line.strip():
            lines.append("    " + line.rstrip())
    return lines


def summary_lines(stats: dict, chars: str) -> list[tuple[str, dict, str]]:
    """(word, markup, text) lines for -r chars `chars`, in their order, from a TerminalReporter's stats."""
    out = []
    for char in chars:
        if char in "fE":
            word, markup = ("FAILED", {"red": True}) if char == "f" else ("ERROR", {"red": True})
            for rep in stats.get("failed" if char == "f" else "error", []):
                where = "" if char == "f" or rep.when in ("call", None) else f" (in {rep.when})"
                out.append((word, markup, f"{rep.nodeid}{where}"))
                out += [("", {}, line) for line in _indented(_reason(rep))]
        elif char == "X":
            for rep in stats.get("xpassed", []):
                out.append(("XPASS", {"yellow": True}, rep.nodeid))
                out += [("", {}, line) for line in _indented(getattr(rep, "wasxfail", ""))]
        elif char == "x":
            xfails = Counter(getattr(rep, "wasxfail", "") or "no reason given" for rep in stats.get("xfailed", []))
            out += [("XFAIL", {"yellow": True}, f"[{n}] {reason}") for reason, n in xfails.most_common()]
        elif char == "s":
            skips = [_reason(rep) for rep in stats.get("skipped", [])]
            out += [("SKIPPED", {"yellow": True}, f"[{n}] {text}") for n, text in group_skips(skips)]
    return out


def write_summary(terminalreporter, chars: str) -> None:
    lines = summary_lines(terminalreporter.stats, chars)
    if not lines:
        return
    terminalreporter.write_sep("=", "short test summary info", cyan=True, bold=True)
    for word, markup, text in lines:
        if word:
            terminalreporter.write(word, **markup)
            terminalreporter.write_line(f" {text}")
        else:
            terminalreporter.write_line(text)


class OneLinePerTest:
    """Under pytest-xdist with -v, pytest writes a test's id when a worker starts it and again in
    its result line ("[gw0] [ 3%] PASSED id"): two lines per test, interleaved between workers.
    The result line says everything, so the start line is left out (the hook itself still runs
    for every other plugin)."""

    def __init__(self, config):
        self.config = config

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_logstart(self):
        if self.config.pluginmanager.get_plugin("dsession") is None:  # not distributed: one line already
            return (yield)
        # The terminal reporter writes the start line only at verbosity > 0 (pytest-xdist already
        # turned its file-name form off): lower it for this one call.
        verbose, self.config.option.verbose = self.config.option.verbose, 0
        try:
            return (yield)
        finally:
            self.config.option.verbose = verbose
