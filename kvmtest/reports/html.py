"""A self-contained HTML picture of a run, in the order a KVM developer reads it: the verdict and
counts, the failures with their diagnostics (guest state, kernel log, traceback, ioctl trace),
the area x CPU-mode matrix, unexpected passes, the known issues with their evidence, the skips
grouped by reason, the comparison with a baseline, and the host fingerprint (folded).

No scripts, no network: it opens from disk in any browser; <details> does the folding.
"""

import datetime
import html
from collections import Counter, defaultdict

from .results import Result
from .skips import group_skips

# status: (mark, colour, what it means). Every status has its own mark and colour.
STATUSES = {
    "failed": ("F", "#d9534f", "failed: KVM did not do what the documentation says (or kvmtest broke)"),
    "error": ("E", "#8e2c8e", "error: the test could not run (setup, fixture or harness error)"),
    "xpassed": ("XP", "#3a87c8", "xpassed: a known-issue test passed; the deviation did not show this time"),
    "xfailed": ("XF", "#f0ad4e", "xfailed: a known host deviation showed as its known-issue entry records"),
    "passed": ("P", "#5cb85c", "passed"),
    "skipped": ("S", "#c8c8c8", "skipped: not applicable here (missing CPU feature, capability, ...)"),
}
SEVERITY = list(STATUSES)  # worst first
OPEN_SECTIONS = ("guest ", "kernel log")  # diagnostics shown unfolded
SECTION_TITLES = {"kvmtest trace": "ioctl trace: the last ioctls and exits"}

STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.2em 2em; color: #1e1e1e; max-width: 110em; }
h1 { font-size: 1.5em; margin: 0 0 0.2em; } h2 { font-size: 1.2em; margin: 1.4em 0 0.4em;
  border-bottom: 1px solid #ccc; padding-bottom: 0.15em; } h3 { font-size: 1em; margin: 0.2em 0; }
.sub { color: #555; margin: 0.1em 0; font-size: 0.9em; }
.verdict { font-size: 1.1em; font-weight: 600; margin: 0.6em 0; padding: 0.4em 0.7em; border-radius: 4px; }
.verdict.bad { background: #fbe3e2; border-left: 6px solid #d9534f; }
.verdict.good { background: #e6f4e6; border-left: 6px solid #5cb85c; }
.chip { display: inline-block; padding: 0.1em 0.5em; border-radius: 3px; font-weight: 600;
  font-size: 0.85em; margin-right: 0.3em; white-space: nowrap; }
.legend { font-size: 0.85em; color: #333; margin: 0.3em 0 0.8em; }
.legend span.item { display: inline-block; margin: 0.15em 1.2em 0.15em 0; }
nav { font-size: 0.9em; margin: 0.4em 0; } nav a { margin-right: 1em; }
table { border-collapse: collapse; margin: 0.4em 0 1em; }
th, td { border: 1px solid #aaa; padding: 0.2em 0.45em; font-size: 0.85em; vertical-align: top; }
th { background: #eee; text-align: left; }
td.cell { text-align: center; white-space: nowrap; }
td.cell span { margin: 0 0.15em; }
.card { border: 1px solid #ccc; border-left: 6px solid #d9534f; border-radius: 4px; padding: 0.4em 0.7em;
  margin: 0.6em 0; }
.card.error { border-left-color: #8e2c8e; } .card.xpassed { border-left-color: #3a87c8; }
.group { margin: 0.6em 0; } .group > h3 { font-size: 0.95em; }
details.folded { padding: 0.2em 0.7em; margin: 0.3em 0 0.3em 1.5em; }
details.folded > summary .msg { display: inline; margin-left: 0.5em; }
.card code { font-size: 0.95em; word-break: break-all; }
.msg { color: #a00; font-family: monospace; white-space: pre-wrap; margin: 0.3em 0; }
pre { background: #f6f6f6; padding: 0.4em; overflow-x: auto; font-size: 0.8em; margin: 0.2em 0 0.4em; }
details > summary { cursor: pointer; font-size: 0.9em; color: #333; }
.issue:target { background: #fff7e0; } #known-issue-table td:first-child { white-space: nowrap; }
dt { font-weight: 600; font-size: 0.85em; margin-top: 0.3em; } dd { margin: 0 0 0 1.2em; font-size: 0.85em; }
.muted { color: #666; font-size: 0.85em; }
"""


def _esc(x) -> str:
    return html.escape(str(x), quote=True)


def _chip(status: str, text: str | None = None) -> str:
    mark, colour, _ = STATUSES[status]
    return f"<span class='chip' style='background:{colour}'>{_esc(text or mark)}</span>"


def _prop(r: Result, key: str) -> str:
    return next((v for k, v in r.properties if k == key), "")


def _issue_anchor(issue_id: str) -> str:
    return f"ki-{''.join(c if c.isalnum() or c in '-_' else '_' for c in issue_id)}"


def _issue_link(issue_id: str) -> str:
    return f"<a href='#{_issue_anchor(issue_id)}'>{_esc(issue_id)}</a>" if issue_id else ""


def _mode_order(modes) -> list[str]:
    try:
        from ..guest import MODES
        known = list(MODES)
    except Exception:  # the report must render even where the guest layer cannot be imported
        known = []
    return sorted(modes, key=lambda m: (m == "-", known.index(m) if m in known else len(known), m))


def _header(results, fingerprint, title, date) -> list[str]:
    counts = Counter(r.status for r in results)
    fp = fingerprint or {}
    host = fp.get("host", "")
    kernel = (fp.get("kernel") or {}).get("release", "")
    heading = f"kvmtest run on {host}: kernel {kernel}" if host and kernel else title
    out = [f"<h1>{_esc(heading)}</h1>", f"<p class='sub'>{_esc(title.removeprefix('kvmtest: '))}</p>",
           f"<p class='sub'>run {_esc(date)}; {len(results)} tests</p>"]
    bad = counts["failed"] + counts["error"]
    if bad:
        out.append(f"<p class='verdict bad'>{bad} unexpected failure(s): see Failures below</p>")
    elif results:
        out.append(f"<p class='verdict good'>No unexpected failures ({counts['xfailed']} known host deviations, "
                   f"{counts['xpassed']} unexpected passes)</p>")
    out.append("<p id='summary'>" + " ".join(_chip(s, f"{counts[s]} {s}") for s in SEVERITY if counts[s]) + "</p>")
    out.append("<div class='legend'>" + "".join(f"<span class='item'>{_chip(s)} {_esc(text)}</span>"
                                               for s, (_, _, text) in STATUSES.items()) + "</div>")
    out.append("<nav><a href='#failures'>Failures</a><a href='#area-mode'>Area &times; CPU mode</a>"
               "<a href='#xpasses'>Unexpected passes</a><a href='#known-issues'>Known issues</a>"
               "<a href='#skipped'>Skipped</a><a href='#host'>Host</a></nav>")
    return out


def _failures(results) -> list[str]:
    """Failures grouped by test function: the first of a group in full, the other parametrizations
    folded under it (one line each: parameters and message), so many look-alike failures do not
    push everything else off the page."""
    failures = [r for r in results if r.status in ("failed", "error")]
    out = [f"<h2 id='failures'>Failures and errors ({len(failures)})</h2>"]
    if not failures:
        out.append("<p class='muted'>None: every test passed, skipped, or failed as a known issue records.</p>")
    groups = defaultdict(list)
    for r in failures:
        groups[(r.classname, r.name.split("[", 1)[0])].append(r)
    for (classname, function), group in groups.items():
        if len(group) == 1:
            out.append(_card(group[0]))
            continue
        out.append(f"<div class='group'><h3>{_esc(classname)}::{_esc(function)}: {len(group)} failures</h3>")
        out.append(_card(group[0]))
        out += [_card(r, folded=True) for r in group[1:]]
        out.append("</div>")
    return out


def _card(r: Result, folded: bool = False) -> str:
    """One failure: test, mode, known issue, message, then its diagnostics (folded: all under one
    summary line)."""
    mode, issue = _prop(r, "cpu_mode"), _prop(r, "known_issue")
    shown = r.name[r.name.find("["):] if folded and "[" in r.name else r.id  # a folded one sits under its function
    head = [_chip(r.status, f"{STATUSES[r.status][0]} {r.status}"), f"<code>{_esc(shown)}</code>"]
    if mode and not folded:
        head.append(f"<span class='muted'>mode {_esc(mode)}</span>")
    if issue:
        head.append(f"<span class='muted'>known issue {_issue_link(issue)}</span>")
    if r.regression:
        head.append(f"<span class='muted'>regression {_esc(r.regression)}</span>")
    body = []
    for title, text in _sections(r):
        opened = " open" if title.startswith(OPEN_SECTIONS) else ""
        label = SECTION_TITLES.get(title, title)
        body.append(f"<details{opened}><summary>{_esc(label)}</summary><pre>{_esc(text)}</pre></details>")
    if r.details:
        body.append(f"<details><summary>traceback</summary><pre>{_esc(r.details)}</pre></details>")
    message = f"<div class='msg'>{_esc(r.message)}</div>"
    if folded:
        return (f"<details class='card folded {r.status}'><summary>{' '.join(head)}{message}</summary>"
                + "".join(body) + "</details>")
    return f"<div class='card {r.status}'><h3>{' '.join(head)}</h3>{message}" + "".join(body) + "</div>"


def _sections(r: Result) -> list[tuple[str, str]]:
    """The captured diagnostics (guest state, ioctl trace, kernel log, output), guest state and
    the kernel log first."""
    sections = [(str(t), str(x)) for t, x in getattr(r, "sections", ()) or () if str(x).strip()]
    return sorted(sections, key=lambda s: (not s[0].startswith("guest "), not s[0].startswith("kernel log")))


def _matrix(results) -> list[str]:
    cells: defaultdict[tuple[str, str], list[str]] = defaultdict(list)
    issues: defaultdict[tuple[str, str], Counter[str]] = defaultdict(Counter)
    for r in results:
        cells[(r.area, r.mode)].append(r.status)
        if _prop(r, "known_issue"):
            issues[(r.area, r.mode)][_prop(r, "known_issue")] += 1
    areas = sorted({a for a, _ in cells})
    modes = _mode_order({m for _, m in cells})
    out = ["<h2 id='area-mode'>Area &times; CPU mode</h2>",
           "<p class='muted'>Tests per suite area and CPU mode; a cell takes the colour of its worst outcome "
           "(- : tests without a CPU mode).</p>",
           "<table id='matrix'><tr><th>area</th>" + "".join(f"<th>{_esc(m)}</th>" for m in modes) + "</tr>"]
    for area in areas:
        row = [f"<tr><th>{_esc(area)}</th>"]
        for m in modes:
            statuses = cells.get((area, m))
            if not statuses:
                row.append("<td></td>")
                continue
            c = Counter(statuses)
            worst = min(c, key=SEVERITY.index)
            label = "".join(f"<span>{c[s]}&nbsp;{STATUSES[s][0]}</span>" for s in SEVERITY if c[s])
            tip = ", ".join(f"{c[s]} {s}" for s in SEVERITY if c[s])
            if issues[(area, m)]:
                tip += "; known issues: " + ", ".join(f"{i} ({n})" for i, n in issues[(area, m)].most_common())
            row.append(f"<td class='cell' style='background:{STATUSES[worst][1]}' title='{_esc(tip)}'>{label}</td>")
        out.append("".join(row) + "</tr>")
    return out + ["</table>"]


def _xpasses(results) -> list[str]:
    xpassed = [r for r in results if r.status == "xpassed"]
    out = [f"<h2 id='xpasses'>Unexpected passes ({len(xpassed)})</h2>"]
    if not xpassed:
        return out + ["<p class='muted'>None: every known host deviation showed.</p>"]
    out.append("<p class='muted'>A test of a known-issue entry passed (an intermittent entry, or a build the entry "
               "was never verified on). Re-verify with <code>kvmtest known-issues verify</code>.</p>")
    return out + [_card(r) for r in xpassed]


def _known_issues(results, issues) -> list[str]:
    by_id: defaultdict[str, Counter[str]] = defaultdict(Counter)
    tests = defaultdict(list)
    for r in results:
        issue_id = _prop(r, "known_issue")
        if issue_id:
            by_id[issue_id][r.status] += 1
            tests[issue_id].append(r)
    entries = {i.id: i for i in issues or ()}
    out = [f"<h2 id='known-issues'>Known issues ({len(by_id)} entries, {sum(map(len, tests.values()))} tests)</h2>"]
    if not by_id:
        return out + ["<p class='muted'>No test of this run is covered by a known-issue entry.</p>"]
    out.append("<p class='muted'>Host deviations from the documented contract, kept as data in "
               "<code>kvmtest/known_issues/*.toml</code> with their evidence.</p>")
    rows = ["<table id='known-issue-table'><tr><th>entry</th><th>tests</th><th>what the host does</th></tr>"]
    for issue_id in sorted(by_id, key=lambda i: (-sum(by_id[i].values()), i)):
        entry = entries.get(issue_id)
        counts = " ".join(_chip(s, f"{by_id[issue_id][s]} {s}") for s in SEVERITY if by_id[issue_id][s])
        source = f"<br><span class='muted'>{_esc(entry.source)}</span>" if entry else ""
        listed = "".join(f"<li>{_chip(r.status)} <code>{_esc(r.id)}</code></li>" for r in tests[issue_id])
        what = (f"{_esc(entry.reason)}{_evidence(entry)}" if entry
                else "<span class='muted'>entry not loaded in this run</span>")
        rows.append(f"<tr class='issue' id='{_issue_anchor(issue_id)}'><td><b>{_esc(issue_id)}</b>{source}</td>"
                    f"<td>{counts}</td><td>{what}<details><summary>its tests ({len(tests[issue_id])})</summary>"
                    f"<ul>{listed}</ul></details></td></tr>")
    return out + rows + ["</table>"]


def _evidence(entry) -> str:
    ev = entry.evidence or {}
    rows = [("What the documentation says", ev.get("contract")), ("What the host did", ev.get("observed")),
            ("How it was shown to be the host, not kvmtest", ev.get("proof"))]
    seen = "; ".join(f"{s.get('build')} ({s.get('date')}: {s.get('result')})" for s in entry.seen) or "no build"
    rows.append(("Verified on", seen))
    if entry.url:
        rows.append(("Reference", entry.url))
    body = "".join(f"<dt>{_esc(k)}</dt><dd>{_esc(v)}</dd>" for k, v in rows if v)
    return f"<details><summary>evidence</summary><dl>{body}</dl></details>"


def _skips(results) -> list[str]:
    skipped = [r for r in results if r.status == "skipped"]
    out = [f"<h2 id='skipped'>Skipped ({len(skipped)})</h2>"]
    if not skipped:
        return out + ["<p class='muted'>None.</p>"]
    rows = "".join(f"<tr><td>{n}</td><td>{_esc(text)}</td></tr>" for n, text in group_skips(r.message for r in skipped))
    return out + [f"<table id='skip-reasons'><tr><th>tests</th><th>reason</th></tr>{rows}</table>"]


def _host(fingerprint) -> list[str]:
    if not fingerprint:
        return []
    rows = "".join(f"<tr><th>{_esc(k)}</th><td>{_esc(v)}</td></tr>" for k, v in _flat(fingerprint))
    return ["<h2 id='host'>Host</h2>",
            "<details><summary>fingerprint: kernel, CPU, KVM modules and parameters, MMU, capabilities</summary>"
            f"<table id='fingerprint'>{rows}</table></details>"]


def render(results: list[Result], fingerprint: dict | None = None, comparison=None, title: str = "kvmtest run",
           *, issues=(), date: str | None = None) -> str:
    """The page. `issues`: the known-issue entries (kvmtest.known_issues.KnownIssue) whose ids the
    results carry, for their reasons and evidence; `date`: when the run ran (default: now)."""
    date = date or datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")
    out = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{_esc(title)}</title>",
           f"<style>{STYLE}</style></head><body>"]
    out += _header(results, fingerprint, title, date)
    out += _failures(results)
    out += _matrix(results)
    out += _xpasses(results)
    out += _known_issues(results, issues)
    out += _skips(results)
    if comparison is not None:
        out.append("<h2>Comparison with the baseline</h2><pre id='comparison'>" + _esc(comparison.text()) + "</pre>")
    out += _host(fingerprint)
    out.append("</body></html>")
    return "\n".join(out)


def _flat(d, prefix=""):
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else k
        if isinstance(v, dict) and k != "capabilities":
            yield from _flat(v, key)
        elif k == "capabilities":
            yield key, ", ".join(n.removeprefix("KVM_CAP_") for n, val in v.items() if val)
        else:
            yield key, v
