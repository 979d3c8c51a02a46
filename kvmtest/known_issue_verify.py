"""`kvmtest known-issues verify`: re-check every known-issue entry that applies to this host.

Each strict entry's tests are run without their xfail; the entry is verified on this build when
every one of them that can run here fails in its test body (a setup error is kvmtest's or the
set-up's, not the host's, and verifies nothing). Each intermittent entry's tests run `--runs`
times; its rate is the number of runs in which at least one of them failed. `--write` records
the outcome as an `[[issue.seen]]` table (build, date, result) in the entry's own file, which is
what makes its xfail strict on this build (see kvmtest.known_issues).

Exit status: 0 when every selected entry was verified, 1 when any entry did not reproduce or could
not be checked, 2 for bad input.
"""

import datetime
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from . import fingerprint as fpmod
from . import known_issues as ki
from .options import jobs_problem, jobs_value
from .reports.junit import split_nodeid
from .reports.results import ReportError, read_junit
from .vcpu import DEFAULT_RUN_TIMEOUT

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass
class EntryResult:
    """What verifying one known-issue entry found: how many runs, in how many of them one of its
    tests failed, and each covered test's status per run (nodeid -> ["failed", "passed", ...])."""
    issue: ki.KnownIssue
    runs: int = 0
    failing_runs: int = 0
    outcomes: dict[str, list[str]] = field(default_factory=dict)  # nodeid -> status per run

    @property
    def ran(self) -> dict[str, list[str]]:
        """The tests that ran (did not skip) in at least one run: the ones that can verify the entry."""
        return {n: s for n, s in self.outcomes.items() if any(x != "skipped" for x in s)}

    @property
    def verified(self) -> bool:
        """Whether the runs confirm the entry: every test that ran failed in every run, or for an
        intermittent entry, some test failed in at least one run. False when nothing ran."""
        if not self.ran:
            return False
        if self.issue.intermittent:
            return self.failing_runs > 0
        return all(all(x == "failed" for x in s) for s in self.ran.values())

    def result_text(self) -> str:
        """The result as an [[issue.seen]] record writes it: "2 of 2 tests failed (1 skipped here)",
        or for an intermittent entry "failed in 3 of 40 runs"."""
        if self.issue.intermittent:
            return f"failed in {self.failing_runs} of {self.runs} runs"
        failed = sum(1 for s in self.ran.values() if all(x == "failed" for x in s))
        return f"{failed} of {len(self.ran)} tests failed" + \
            (f" ({len(self.outcomes) - len(self.ran)} skipped here)" if len(self.ran) < len(self.outcomes) else "")

    def problems(self) -> list[str]:
        """Why the entry is not verified, one line per reason: no test matches its patterns, all
        skipped, a test that passed (or errored outside its body) where the entry says it fails."""
        if not self.outcomes:
            return ["no collected test matches its patterns"]
        if not self.ran:
            return [f"all {len(self.outcomes)} tests skipped here: nothing to verify"]
        out = []
        for nodeid, statuses in sorted(self.ran.items()):
            bad = [s for s in statuses if s != "failed"]
            if self.issue.intermittent:
                if "error" in bad:
                    out.append(f"{nodeid}: error outside the test body in {bad.count('error')} run(s)")
            elif bad:
                out.append(f"{nodeid}: {bad[0]}" + (" (the host did not deviate)" if bad[0] == "passed" else ""))
        if self.issue.intermittent and self.failing_runs == 0:
            out.append(f"not reproduced in {self.runs} runs")
        return out


def _pytest(args: list[str], timeout: float) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args]
    return subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout)


def _common(files: list[str], device: str, ids: list[str]) -> list[str]:
    # The default per-KVM_RUN timeout, whatever KVMTEST_GUEST_TIMEOUT or an ini says: a timeout set
    # too short makes passing tests fail, and that must not be recorded as the host's deviation.
    return [f"--kvm-known-issues={','.join(files)}", f"--kvm-device={device}",
            f"--kvm-guest-timeout={DEFAULT_RUN_TIMEOUT}", f"--kvm-verify-known-issues={','.join(ids)}", "suites"]


def collect(files, device, issues) -> dict[str, list[str]]:
    """Entry id -> the collected suite tests it covers on this host."""
    proc = _pytest(["--collect-only", "-q", "-p", "no:xdist", *_common(files, device, [i.id for i in issues])], 600)
    nodeids = [line for line in proc.stdout.splitlines() if line.startswith("suites/") and "::" in line]
    if proc.returncode not in (0, 5):
        raise ki.KnownIssueError(f"collecting the suites failed (pytest exit {proc.returncode}):\n"
                                 f"{(proc.stdout + proc.stderr)[-3000:]}")
    owned: dict[str, list[str]] = {}
    for nodeid in nodeids:
        owner = next((i for i in issues if i.matches_test(nodeid)), None)  # first entry wins, as in the plugin
        if owner is not None:
            owned.setdefault(owner.id, []).append(nodeid)
    return owned


def run_once(files, device, issues, jobs: str) -> dict[tuple[str, str], str]:
    """Run the entries' tests once without xfail; JUnit (classname, name) -> passed/failed/error/skipped
    (split_nodeid gives a nodeid's key)."""
    with tempfile.TemporaryDirectory(prefix="kvmtest-verify-") as tmp:
        junit = Path(tmp) / "run.xml"
        extra = ["-n", jobs] if jobs != "0" else ["-p", "no:xdist"]
        proc = _pytest(["-q", f"--kvm-junit={junit}", *extra, *_common(files, device, [i.id for i in issues])],
                       3600)
        try:
            results = read_junit(junit)
        except ReportError as e:
            raise ki.KnownIssueError(f"the verification run wrote no report ({e}); pytest exit "
                                     f"{proc.returncode}:\n{(proc.stdout + proc.stderr)[-3000:]}") from None
    return {(r.classname, r.name): r.status for r in results}


def verify(files, device: str, issues: list[ki.KnownIssue], runs: int, jobs: str, echo=print) -> list[EntryResult]:
    """Run the tests of `issues` (known-issue entries from `files`) against `device` without xfail:
    once for every entry, and `runs` - 1 more times for intermittent ones, with `jobs` pytest-xdist
    workers; `echo` reports progress. Returns one EntryResult per entry. KnownIssueError when
    collecting or a run fails to produce a report."""
    owned = collect(files, device, issues)
    results = {i.id: EntryResult(i) for i in issues}
    for entry in results.values():
        entry.outcomes = {n: [] for n in owned.get(entry.issue.id, [])}
    rounds = [(issues, 1)]
    intermittent = [i for i in issues if i.intermittent]
    if intermittent and runs > 1:
        rounds.append((intermittent, runs - 1))
    for batch, count in rounds:
        for n in range(count):
            echo(f"kvmtest known-issues verify: run {n + 1} of {count} over {len(batch)} entries", flush=True)
            statuses = run_once(files, device, batch, jobs)
            for issue in batch:
                entry = results[issue.id]
                entry.runs += 1
                failed_here = False
                for nodeid, seen in entry.outcomes.items():
                    status = statuses.get(split_nodeid(nodeid), "missing")
                    seen.append(status)
                    failed_here |= status == "failed"
                entry.failing_runs += failed_here
    return list(results.values())


def write_seen(path: Path, verified: list[EntryResult], build: str, date: str) -> None:
    """Record (or replace) this build's [[issue.seen]] in each verified entry, keeping the file's layout."""
    import tomlkit

    doc = tomlkit.parse(path.read_text())
    by_id = {e.issue.id: e for e in verified}
    for table in doc.get("issue", []):
        entry = by_id.get(table.get("id"))
        if entry is None:
            continue
        seen = table.get("seen")
        if seen is None:
            seen = tomlkit.aot()
            table["seen"] = seen
        record = tomlkit.table()
        record.update({"build": build, "date": date, "result": entry.result_text()})
        for index, old in enumerate(list(seen)):
            if old.get("build") == build:
                seen[index] = record
                break
        else:
            seen.append(record)
    text = tomlkit.dumps(doc)
    # tomlkit puts the next [[issue]] right under an appended table; keep one blank line between entries.
    text = text.replace('"\n[[issue]]', '"\n\n[[issue]]')
    ki.load_text(text, path)  # never write a file the loader would refuse
    path.write_text(text)


def main(args) -> int:
    """`kvmtest known-issues verify`: verify the entries that apply to this host and print each
    verdict; with --write, record the verified ones as [[issue.seen]] for this build in their files.
    Returns 0 when all are verified, 1 when one is not, 2 for bad arguments or no usable KVM."""
    files = [str(p) for p in (args.file or ki.builtin_files())]
    try:
        issues = ki.load_all(files)
    except ki.KnownIssueError as e:
        print(f"kvmtest known-issues verify: {e}", file=sys.stderr)
        return 2
    if args.runs < 1:
        print(f"kvmtest known-issues verify: --runs {args.runs}: must be at least 1", file=sys.stderr)
        return 2
    if problem := jobs_problem(args.jobs, n := max(1, len(os.sched_getaffinity(0))),
                               f"this process may use {n} CPU(s)"):
        print(f"kvmtest known-issues verify: {problem}", file=sys.stderr)
        return 2
    fp = fpmod.collect(args.device)
    if fp.get("kvm") is None:
        print(f"kvmtest known-issues verify: KVM unavailable on {args.device}: {fp.get('kvm_error')}", file=sys.stderr)
        return 2
    build = fpmod.build_id(fp)
    applying = [i for i in issues if i.matches_host(fp)]
    not_run = [i.id for i in applying if not i.run]
    if not_run:
        print(f"kvmtest known-issues verify: not run here (they take the host down): {', '.join(not_run)}")
    applying = [i for i in applying if i.run]
    if args.id:
        unknown = sorted(set(args.id) - {i.id for i in applying})
        if unknown:
            print(unknown_ids_text(unknown, issues, applying, fp), file=sys.stderr)
            return 2
        applying = [i for i in applying if i.id in args.id]
    if not applying:
        print("kvmtest known-issues verify: no known-issue entry applies to this host")
        return 0
    print(f"kvmtest known-issues verify: {len(applying)} entries on build {build}")
    try:
        results = verify(files, args.device, applying, args.runs, args.jobs)
    except (ki.KnownIssueError, subprocess.TimeoutExpired) as e:
        print(f"kvmtest known-issues verify: {e}", file=sys.stderr)
        return 2
    bad = 0
    for entry in results:
        mark = "verified" if entry.verified and not entry.problems() else "NOT VERIFIED"
        bad += mark != "verified"
        print(f"{mark:13} {entry.issue.id}: {entry.result_text() if entry.ran else 'nothing ran'}")
        for line in entry.problems():
            print(f"              {line}")
    if args.write:
        date = datetime.date.today().isoformat()
        good = [e for e in results if e.verified and not e.problems()]
        for path in files:
            mine = [e for e in good if e.issue.source.split(":")[0] == Path(path).name]
            if mine:
                write_seen(Path(path), mine, build, date)
                print(f"kvmtest known-issues verify: recorded {len(mine)} entries as seen on this build in {path}")
    return 1 if bad else 0


def unknown_ids_text(unknown: list[str], issues: list[ki.KnownIssue], applying: list[ki.KnownIssue],
                     fp: dict) -> str:
    """The error for --id values that name no entry verify can run here: one line per unknown id
    saying why (no such entry in the files, its host predicate does not match, or it is not run
    because it takes the host down), then how many entries do apply, one id per line."""
    by_id = {i.id: i for i in issues}
    lines = []
    for name in unknown:
        issue = by_id.get(name)
        if issue is None:
            why = "no such entry in the known-issue files"
        elif not issue.matches_host(fp):
            why = f"the entry ({issue.source}) does not apply to this host"
        else:
            why = f"the entry ({issue.source}) is not run here (it would take the host down)"
        shown = name if name and name.strip() == name else repr(name)  # an empty or padded id, visibly
        lines.append(f"kvmtest known-issues verify: --id {shown}: {why}")
    lines.append(f"{len(applying)} entries apply to this host and can be verified"
                 + (":" if applying else "") + "".join(f"\n  {name}" for name in sorted(i.id for i in applying)))
    return "\n".join(lines)


def add_parser(sub) -> None:
    """Add `kvmtest known-issues verify [--id ID] [--file F] [--runs N] [--write] [--device D]
    [-j N]` to the subcommand parsers `sub`."""
    ki_cmd = sub.add_parser("known-issues", help="work with known-issue files")
    ki_sub = ki_cmd.add_subparsers(dest="ki_command", required=True)
    v = ki_sub.add_parser("verify", help="re-run each applying entry's tests without xfail: strict entries must "
                                         "still fail, intermittent ones get a measured rate")
    v.add_argument("--id", action="append", default=[], help="only this entry (repeatable)")
    v.add_argument("--file", action="append", default=[], help="known-issue TOML file (default: the shipped ones)")
    v.add_argument("--runs", type=int, default=20, help="runs for intermittent entries (default 20)")
    v.add_argument("--write", action="store_true", help="record verified entries as [[issue.seen]] for this build")
    v.add_argument("--device", default=os.environ.get("KVMTEST_DEVICE", "/dev/kvm"))
    v.add_argument("-j", "--jobs", default="auto", type=jobs_value,
                   help="pytest-xdist workers ('auto', a number, or 0)")
