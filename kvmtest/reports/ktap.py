"""KTAP v1 output (Documentation/dev-tools/ktap.rst), nested by suite area, so kernel CI can
ingest kvmtest like a kselftest. Directives: SKIP, XFAIL, TIMEOUT."""

from collections import defaultdict

from .results import Result


def _clean(text: str) -> str:
    # '#' starts a directive in KTAP and newlines end the line: keep names and reasons safe.
    return " ".join(text.replace("#", "").split())


def _line(number: int, r: Result) -> str:
    name = _clean(f"{r.classname.rsplit('.', 1)[-1]}::{r.name}" if r.classname else r.name)
    reason = _clean(r.message)[:200]
    if r.status == "passed":
        return f"ok {number} {name}"
    if r.status == "skipped":
        return f"ok {number} {name} # SKIP {reason}".rstrip()
    if r.status == "xfailed":
        return f"ok {number} {name} # XFAIL {reason}".rstrip()
    if r.status == "xpassed":  # a non-strict XPASS passes (KTAP has no XPASS directive): say so in a diagnostic
        return f"# {_clean(r.message)[:200]}\n    ok {number} {name}"
    if "GuestTimeout" in r.message or "still running after" in r.message:
        return f"not ok {number} {name} # TIMEOUT {reason}".rstrip()
    return f"not ok {number} {name}"


def render(results: list[Result], header_comments: list[str] = ()) -> str:
    areas: dict[str, list[Result]] = defaultdict(list)
    for r in sorted(results, key=lambda r: (r.area, r.id)):
        areas[r.area].append(r)
    out = ["KTAP version 1"] + [f"# {_clean(c)}" for c in header_comments] + [f"1..{len(areas)}"]
    for number, (area, items) in enumerate(areas.items(), start=1):
        out += ["    KTAP version 1", f"    # Subtest: {area}", f"    1..{len(items)}"]
        out += ["    " + _line(i, r) for i, r in enumerate(items, start=1)]
        bad = any(r.status in ("failed", "error") for r in items)
        out.append(f"{'not ok' if bad else 'ok'} {number} {area}")
    return "\n".join(out) + "\n"
