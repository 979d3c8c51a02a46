"""A self-contained HTML picture of a run: fingerprint, an area x CPU-mode matrix coloured by
outcome, the failures with their diagnostics, and the comparison with a baseline. No scripts,
no network: it opens from disk in any browser."""

import html
from collections import Counter, defaultdict

from .results import Result

COLOURS = {"failed": "#d9534f", "error": "#d9534f", "xpassed": "#f0ad4e", "xfailed": "#f0ad4e",
           "skipped": "#c8c8c8", "passed": "#5cb85c"}
SEVERITY = ["failed", "error", "xpassed", "xfailed", "passed", "skipped"]

STYLE = """
body { font-family: sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #999; padding: 0.25em 0.5em; font-size: 0.9em; }
th { background: #eee; }
td.cell { text-align: center; min-width: 4.5em; }
pre { background: #f6f6f6; padding: 0.5em; overflow-x: auto; font-size: 0.8em; }
.legend span { display: inline-block; padding: 0.1em 0.6em; margin-right: 0.4em; }
"""


def _esc(x) -> str:
    return html.escape(str(x))


def _worst(statuses) -> str:
    return min(statuses, key=SEVERITY.index)


def render(results: list[Result], fingerprint: dict | None = None, comparison=None, title: str = "kvmtest run") -> str:
    counts = Counter(r.status for r in results)
    cells = defaultdict(list)
    for r in results:
        cells[(r.area, r.mode)].append(r.status)
    areas = sorted({a for a, _ in cells})
    modes = sorted({m for _, m in cells}, key=lambda m: (m == "-", m))
    out = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{_esc(title)}</title>",
           f"<style>{STYLE}</style></head><body>", f"<h1>{_esc(title)}</h1>"]
    out.append("<p id='summary'>" + ", ".join(f"{counts[s]} {s}" for s in SEVERITY if counts[s]) + "</p>")
    out.append("<div class='legend'>" + "".join(f"<span style='background:{COLOURS[s]}'>{s}</span>"
                                               for s in SEVERITY) + "</div>")
    out.append("<h2>Area &times; CPU mode</h2><table id='matrix'><tr><th>area</th>"
               + "".join(f"<th>{_esc(m)}</th>" for m in modes) + "</tr>")
    for area in areas:
        row = [f"<tr><th>{_esc(area)}</th>"]
        for m in modes:
            statuses = cells.get((area, m))
            if not statuses:
                row.append("<td></td>")
                continue
            worst = _worst(statuses)
            c = Counter(statuses)
            label = " ".join(f"{c[s]}{s[0].upper()}" for s in SEVERITY if c[s])
            row.append(f"<td class='cell' style='background:{COLOURS[worst]}' title='{_esc(worst)}'>{_esc(label)}</td>")
        out.append("".join(row) + "</tr>")
    out.append("</table>")
    failures = [r for r in results if r.status in ("failed", "error")]
    out.append(f"<h2>Failures ({len(failures)})</h2>")
    for r in failures:
        out.append(f"<h3>{_esc(r.id)}</h3><p>{_esc(r.status)}: {_esc(r.message)}</p><pre>{_esc(r.details)}</pre>")
    if comparison is not None:
        out.append("<h2>Comparison with the baseline</h2><pre id='comparison'>" + _esc(comparison.text()) + "</pre>")
    if fingerprint:
        out.append("<h2>Host</h2><table id='fingerprint'>")
        for key, value in _flat(fingerprint):
            out.append(f"<tr><th>{_esc(key)}</th><td>{_esc(value)}</td></tr>")
        out.append("</table>")
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
