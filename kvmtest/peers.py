"""The peer coverage map, suites/peers.toml: each program of kvm-unit-tests (x86/unittests.cfg)
and of the kernel's KVM selftests (x86 and arch-neutral) with the kvmtest suite tests that check
the same, what they leave out, or why the program is out of scope. The file says what each field
means; this module loads it (one PeersFileError naming the program and field for anything
malformed) and renders it into the suites' READMEs between PEERS_BEGIN and PEERS_END:
a table per suite area in suites/<area>/README.md, the figures and the out-of-scope programs in
suites/README.md.

    python -m kvmtest.peers          rewrite the generated sections
    python -m kvmtest.peers --check  exit 1 naming each README that differs from the file
"""

import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

from kvmtest.errors import KvmtestError

ROOT = Path(__file__).resolve().parent.parent
PEERS_TOML = ROOT / "suites" / "peers.toml"
PEERS = ("kvm-unit-tests", "selftests")
STATUSES = ("full", "partial", "none", "out-of-scope")
REASONS = {"nested": "nested virtualization", "pmu": "PMU",
           "not-kvm": "not KVM (the peer's own library, or QEMU)"}
PEERS_BEGIN = "<!-- peers:begin: generated from suites/peers.toml by `python -m kvmtest.peers`, edit that file -->"
PEERS_END = "<!-- peers:end -->"
_KEYS = {"peer", "name", "sections", "area", "checks", "status", "tests", "benchmarks", "needs",
         "missing", "reason", "note", "undocumented"}


class PeersFileError(KvmtestError):
    """suites/peers.toml does not follow its schema; names the program and the field."""


@dataclass(frozen=True)
class Program:
    """One peer-suite program of suites/peers.toml: its suite (`peer`) and `name`, what it checks, its
    status (full, partial, none or out-of-scope), the suite area it belongs to, the kvmtest tests
    and benchmarks that cover it, what it needs that the development host lacks, what is missing and
    why, and (`undocumented`) what the peer program also asserts that no document defines."""
    peer: str
    name: str
    checks: str
    status: str
    area: str = ""
    sections: tuple = ()
    tests: tuple = ()
    benchmarks: tuple = ()
    needs: tuple = ()
    missing: str = ""
    reason: str = ""
    note: str = ""
    undocumented: str = ""

    @property
    def in_scope(self) -> bool:
        """In scope as issue 16 counts: everything but nested virtualization, PMU and non-KVM checks."""
        return self.status != "out-of-scope"

    @property
    def runs_here(self) -> bool:
        """The peer program needs nothing the kvm_pvm development host lacks."""
        return self.in_scope and not self.needs


def areas(root: Path = ROOT) -> list[str]:
    """Suite areas with a README: where a program's table row can go."""
    return sorted(p.parent.name for p in (root / "suites").glob("*/README.md"))


def _program(raw: dict, where: str, known_areas: list[str]) -> Program:
    def bad(why):
        raise PeersFileError(f"suites/peers.toml: {where}: {why}")

    if unknown := set(raw) - _KEYS:
        bad(f"unknown field(s) {sorted(unknown)}; allowed: {sorted(_KEYS)}")
    for key in ("peer", "name", "checks", "status"):
        if not isinstance(raw.get(key), str) or not raw[key].strip():
            bad(f"`{key}` must be a non-empty string")
    for key in ("sections", "tests", "benchmarks", "needs"):
        value = raw.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
            bad(f"`{key}` must be a list of non-empty strings")
    peer, status = raw["peer"], raw["status"]
    if peer not in PEERS:
        bad(f"peer {peer!r} is not one of {PEERS}")
    if status not in STATUSES:
        bad(f"status {status!r} is not one of {STATUSES}")
    if (peer == "kvm-unit-tests") != bool(raw.get("sections")):
        bad("`sections` (the unittests.cfg sections that run it) is required for kvm-unit-tests and only there")
    if "area" in raw and raw["area"] not in known_areas:
        bad(f"`area` {raw['area']!r} is not a suite area with a README: {known_areas}")
    if status == "out-of-scope":
        if raw.get("reason") not in REASONS:
            bad(f"out-of-scope needs a `reason`, one of {sorted(REASONS)}")
        for key in ("missing", "benchmarks", "needs"):
            if key in raw:
                bad(f"`{key}` does not apply to an out-of-scope program")
    else:
        if "reason" in raw:
            bad(f"`reason` is only for out-of-scope programs (this one is {status})")
        if "area" not in raw:
            bad(f"`area` is required (a suite area with a README: {known_areas})")
    if status == "full" and (not raw.get("tests") or "missing" in raw):
        bad("a full equivalent names its `tests` and has no `missing`")
    if "undocumented" in raw and (status != "full" or not isinstance(raw["undocumented"], str)
                                  or not raw["undocumented"].strip()):
        bad("`undocumented` (the peer's assertions no api.rst/SDM/APM text defines) is a non-empty string, "
            "for a full equivalent only: anything documented that is not checked is `missing`")
    if status == "partial" and not (raw.get("tests") or raw.get("benchmarks")):
        bad("a partial equivalent names its `tests` or `benchmarks`")
    if status in ("partial", "none") and not str(raw.get("missing", "")).strip():
        bad(f"a {status} program says what is not covered in `missing`")
    if status == "none" and (raw.get("tests") or raw.get("benchmarks")):
        bad("status none names no tests or benchmarks (partial does)")
    fields: dict = {k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()}
    return Program(**fields)


def load(path: Path = PEERS_TOML, root: Path = ROOT) -> list[Program]:
    """The programs of the peer map, validated; PeersFileError names the first fault."""
    with open(path, "rb") as f:
        try:
            data = tomllib.load(f)
        except tomllib.TOMLDecodeError as e:
            raise PeersFileError(f"{path}: not valid TOML: {e}") from None
    if set(data) - {"source", "program"} or not isinstance(data.get("program"), list):
        raise PeersFileError(f"{path}: expected [source] and [[program]] tables, found {sorted(data)}")
    known_areas, seen, out = areas(root), set(), []
    for i, raw in enumerate(data["program"]):
        where = f"program {i + 1} ({raw.get('peer')} {raw.get('name')})"
        p = _program(raw, where, known_areas)
        if (p.peer, p.name) in seen:
            raise PeersFileError(f"{path}: {where}: listed twice")
        seen.add((p.peer, p.name))
        out.append(p)
    return out


# --- figures and tables -------------------------------------------------------------------------

def figures(programs: list[Program]) -> dict:
    """Counts per peer (and "all"): programs, each status, each out-of-scope reason, in scope, and
    the coverage issue 16 uses, (full + partial / 2) / in scope, over all in-scope programs and
    over those the kvm_pvm host can run."""
    out = {}
    for peer in PEERS + ("all",):
        ps = [p for p in programs if peer in ("all", p.peer)]
        here = [p for p in ps if p.runs_here]
        f: dict[str, float] = {s: sum(p.status == s for p in ps) for s in STATUSES}
        f.update({r: sum(p.reason == r for p in ps) for r in REASONS})
        f.update(programs=len(ps), in_scope=sum(p.in_scope for p in ps), runs_here=len(here),
                 full_here=sum(p.status == "full" for p in here), partial_here=sum(p.status == "partial" for p in here),
                 undocumented=sum(bool(p.undocumented) for p in ps),
                 undocumented_here=sum(bool(p.undocumented) for p in here))
        f["coverage"] = (f["full"] + f["partial"] / 2) / f["in_scope"] if f["in_scope"] else 0.0
        f["coverage_here"] = (f["full_here"] + f["partial_here"] / 2) / len(here) if here else 0.0
        f["full_here_share"] = f["full_here"] / len(here) if here else 0.0
        out[peer] = f
    return out


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _ids(p: Program, area: str) -> str:
    prefix = f"suites/{area}/" if area else "suites/"
    shown = [f"`{t.removeprefix(prefix).removeprefix('suites/')}`" for t in p.tests]
    return ", ".join(shown + [f"`{b}`" for b in p.benchmarks]) or "-"


def _undocumented(p: Program) -> str:
    return f"Not checked, as no document defines it: {p.undocumented}" if p.undocumented else ""


def render_area(programs: list[Program], area: str) -> str:
    """The "Peer programs" Markdown table of suite area `area`: each in-scope program mapped there,
    its status and the kvmtest tests covering it."""
    rows = sorted((p for p in programs if p.area == area and p.in_scope), key=lambda p: (p.peer, p.name))
    lines = ["## Peer programs", "",
             "kvm-unit-tests and KVM selftests programs whose checks belong in this area, with the kvmtest",
             "tests that cover them (`needs`: what the peer program requires that the kvm_pvm host lacks).",
             "Figures and out-of-scope programs: [../README.md](../README.md).", "",
             "| peer | program | what it checks | status | kvmtest | not covered |",
             "| --- | --- | --- | --- | --- | --- |"]
    for p in rows:
        name = f"`{p.name}`" + (f" ({', '.join(p.sections)})" if p.sections and p.sections != (p.name,) else "")
        status = p.status + (f"; needs {', '.join(p.needs)}" if p.needs else "")
        lines.append(f"| {p.peer} | {_cell(name)} | {_cell(p.checks)} | {_cell(status)} | {_cell(_ids(p, area))} | "
                     f"{_cell(' '.join(x for x in (p.missing, _undocumented(p), p.note) if x) or '-')} |")
    return "\n".join(lines) + ("" if rows else "\n| - | - | - | - | - | - |")


def render_summary(programs: list[Program]) -> str:
    """The Markdown coverage table of suites/README.md: programs per peer, full and partial
    equivalents, and coverage as (full + partial / 2) / in scope."""
    f = figures(programs)
    cols = PEERS + ("all",)
    def pct(x):
        return f"{100 * x:.0f} %"

    def row(label, key, fmt=str):
        return f"| {label} | " + " | ".join(fmt(f[c][key]) for c in cols) + " |"

    lines = ["| | " + " | ".join(cols) + " |", "| --- |" + " --- |" * len(cols),
             row("programs listed", "programs")]
    lines += [row(f"out of scope: {REASONS[r]}", r) for r in REASONS]
    lines += [row("in scope", "in_scope"), row("full equivalent", "full"),
              row("of which leave out only assertions no document defines (`undocumented`)", "undocumented"),
              row("partial equivalent", "partial"),
              row("no equivalent yet", "none"), row("coverage, (full + partial / 2) / in scope", "coverage", pct),
              row("in scope and runnable on the kvm_pvm host (no `needs`)", "runs_here"),
              row("full equivalent among those", "full_here"),
              row("of which leave out only assertions no document defines", "undocumented_here"),
              row("full equivalents among those, share", "full_here_share", pct),
              row("coverage of those, (full + partial / 2) / runnable", "coverage_here", pct)]
    lines += ["", "Out of scope:", "", "| peer | program | reason | what it checks |", "| --- | --- | --- | --- |"]
    for p in sorted((p for p in programs if not p.in_scope), key=lambda p: (p.reason, p.peer, p.name)):
        note = f" {p.note}" if p.note else ""
        lines.append(f"| {p.peer} | `{p.name}` | {REASONS[p.reason]} | {_cell(p.checks + note)} |")
    return "\n".join(lines)


def expected_sections(programs: list[Program], root: Path = ROOT) -> dict[Path, str]:
    """README path -> the text its generated section must hold."""
    out = {root / "suites" / "README.md": render_summary(programs)}
    used = {p.area for p in programs if p.in_scope}   # and a README that had a table keeps one
    for a in areas(root):
        readme = root / "suites" / a / "README.md"
        if a in used or PEERS_BEGIN in readme.read_text():
            out[readme] = render_area(programs, a)
    return out


def _with_section(text: str, body: str) -> str:
    block = f"{PEERS_BEGIN}\n{body}\n{PEERS_END}"
    start, end = text.find(PEERS_BEGIN), text.find(PEERS_END)
    if start < 0 or end < start:
        return text.rstrip("\n") + "\n\n" + block + "\n"
    return text[:start] + block + text[end + len(PEERS_END):]


def stale(root: Path = ROOT, path: Path = PEERS_TOML) -> list[Path]:
    """READMEs whose generated section is not what the peer map renders to."""
    return [readme for readme, body in expected_sections(load(path, root), root).items()
            if not readme.exists() or _with_section(readme.read_text(), body) != readme.read_text()]


def update(root: Path = ROOT, path: Path = PEERS_TOML) -> list[Path]:
    """Rewrite the generated sections (appended where a README has none yet); returns those changed."""
    changed = []
    for readme, body in expected_sections(load(path, root), root).items():
        old = readme.read_text() if readme.exists() else ""
        if (new := _with_section(old, body)) != old:
            readme.write_text(new)
            changed.append(readme)
    return changed


def main(argv=None) -> int:
    """`python -m kvmtest.peers [--check]`: regenerate the peer tables in the READMEs from
    suites/peers.toml, or with --check list the stale ones. Returns 1 when --check finds one stale
    or peers.toml is malformed, 2 for bad arguments, else 0."""
    args = sys.argv[1:] if argv is None else argv
    try:
        if args == ["--check"]:
            out = stale()
            for p in out:
                print(f"{p.relative_to(ROOT)}: generated peer section differs from suites/peers.toml "
                      "(run python -m kvmtest.peers)", file=sys.stderr)
            return 1 if out else 0
        if args:
            print("usage: python -m kvmtest.peers [--check]", file=sys.stderr)
            return 2
        for p in update():
            print(f"rewrote {p.relative_to(ROOT)}")
        return 0
    except PeersFileError as e:
        print(e, file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
