"""Known host deviations as data (TOML), turned into strict xfails for matching tests.

Each [[issue]] names test-id globs, a host predicate over the fingerprint, the reason and
the evidence: what the KVM documentation or the SDM/APM says, what the host did, and how
it was proved to be the host and not kvmtest. A fixed host makes the test XPASS, which
fails the run (strict) until the entry is removed. An entry marked `intermittent = true`
is for a deviation the host shows only on some runs (a race inside the host): its tests
become non-strict xfails, so a run without the deviation passes, and the evidence must say
how often it was seen.

Host behaviour drifts between builds of the same kernel release, so each entry records the
builds it was verified on (`[[issue.seen]]`, written by `kvmtest known-issues verify
--write`). On a recorded build the xfail is strict; on a build the entry was never verified
on it is non-strict, so a deviation that went away shows as an XPASS of that entry alone
(named in the run's summary) instead of failing the run or hiding.

An entry with `run = false` is for a test that takes the host itself down (a QEMU abort, a host
panic): on matching hosts that test is skipped, naming the entry, instead of run.

An entry whose deviation is a guest that never completes (KVM_RUN keeps running until the
watchdog kicks it) may give `hang_timeout`, seconds: on matching hosts its tests run with that
per-KVM_RUN timeout instead of their own (a spinning vCPU burns a CPU for the whole timeout, on
every run). A host without the deviation completes such a guest in milliseconds, so a fixed host
still XPASSes; `kvmtest known-issues verify` applies no entry and so waits the test's own timeout.

A known issue covers what the host does, never a harness error: only failures raised as
AssertionError (guest verdicts, GuestFailure), KvmError (an ioctl's errno) or GuestTimeout
become xfails; anything else (a permission error on /dev/kvm, an AssemblyError, a TypeError)
stays an error.

    [[issue]]
    id = "pvm-legacy-paging"
    tests = ["suites/smoke/test_smoke.py::test_out_then_halt[paging32*"]
    reason = "..."
    [issue.host]
    module = "kvm_pvm"                      # a loaded module (fingerprint "modules")
    vendor = "AuthenticAMD"                 # optional: CPU vendor
    kernel_min = "6.6"                      # optional: kernel release range, inclusive
    kernel_max = "6.19"                     # inclusive, by the parts given: "6.19" covers 6.19.y
    params = { "kvm.tdp_mmu" = "N" }        # optional: module parameters
    mmu = "shadow"                          # optional: fingerprint MMU mode
    accelerator = "tcg"                     # optional: what runs the kernel ("none" on bare metal or a
                                            # host's own VM; "tcg"/"kvm" under `kvmtest run --kernel`)
    # hang_timeout = 0.2                    # optional, at top level: the deviation is a hang (above)
    [issue.evidence]
    contract = "SDM Vol. 3A 4.1.1: ..."
    observed = "..."
    proof = "..."
    [[issue.seen]]                          # one per build it was verified on
    build = "6.18.44-fc-v669 #1 SMP PREEMPT_DYNAMIC @0"   # fingerprint.build_id()
    date = "2026-11-30"
    result = "3 of 3 tests failed"          # intermittent: "failed in 3 of 40 runs"
"""

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from .errors import GuestTimeout, KvmError, KvmtestError

BUILTIN_DIR = Path(__file__).parent / "known_issues"
_ISSUE_KEYS = {"id", "tests", "reason", "host", "evidence", "url", "commit", "intermittent", "seen", "run",
               "hang_timeout"}
_SEEN_KEYS = {"build", "date", "result"}

# What a host deviation can raise. Anything else is kvmtest's own error or bad set-up and must
# never be reported as an expected failure (pytest's xfail `raises=`).
HOST_FAILURES = (AssertionError, KvmError, GuestTimeout)
_HOST_KEYS = {"module", "vendor", "kernel_min", "kernel_max", "params", "mmu", "backend", "accelerator"}
_EVIDENCE_KEYS = {"contract", "observed", "proof"}


class KnownIssueError(KvmtestError):
    """A malformed known-issue file; names the file and line."""


@dataclass(frozen=True)
class KnownIssue:
    """One [[issue]] of a known-issue file: the test-id globs it covers (`tests`), the host
    predicate (`host`: module, backend, vendor, mmu, accelerator, kernel_min/max, module params),
    the reason, the evidence (contract, observed, proof), where it is written (`source`, file:line),
    the builds it was verified on (`seen`), whether it is intermittent, and whether its tests may
    run at all on such a host (`run`)."""
    id: str
    tests: tuple[str, ...]
    reason: str
    host: dict
    evidence: dict
    source: str
    url: str | None = None
    commit: str | None = None
    intermittent: bool = False
    seen: tuple[dict, ...] = ()
    run: bool = True  # False: the test takes the host itself down there (e.g. aborts QEMU), so it is not run
    hang_timeout: float | None = None  # seconds per KVM_RUN for its tests where it applies (a hang deviation)
    _patterns: tuple = field(default=(), compare=False, repr=False)

    def skip_reason(self) -> str:
        """The skip message for a test this entry keeps from running (run = false)."""
        return (f"known issue {self.id}, not run on this host (it would take the host down): {self.reason} "
                f"[{self.source}]")

    def matches_test(self, nodeid: str) -> bool:
        """Whether test id `nodeid` matches one of the entry's globs (glob_to_regex)."""
        return any(p.fullmatch(nodeid) for p in self._patterns)

    def matches_host(self, fp: dict) -> bool:
        """Whether the host fingerprint `fp` satisfies the entry's host predicate (host_matches)."""
        return host_matches(self.host, fp)

    def seen_on(self, build: str) -> bool:
        """Whether this entry was verified on `build` (fingerprint.build_id)."""
        return any(s["build"] == build for s in self.seen)

    def strict_on(self, build: str) -> bool:
        """Strict xfail only where the deviation is known to be deterministic on this very build."""
        return not self.intermittent and self.seen_on(build)

    def xfail_reason(self, build: str | None = None) -> str:
        """The xfail reason a covered test reports: the entry id, reason and source, noting an
        intermittent entry and, given the current `build`, a build the entry was never verified on."""
        note = " (intermittent: seen on some runs only)" if self.intermittent else ""
        if build is not None and not self.seen_on(build):
            where = ", ".join(sorted({s["build"] for s in self.seen})) or "no build"
            note += f" (not verified on this build; seen on: {where})"
        return f"known issue {self.id}: {self.reason}{note} [{self.source}]"


class IssueIndex:
    """Which entry covers a test id: the first of `issues`, in order, with a glob matching it, as
    `next(i for i in issues if i.matches_test(nodeid))` says, without trying every glob of every
    entry on every test (a whole-suite collection tried about 2 million).

    Almost every glob names its file literally ("suites/x/test_y.py::..."); such a glob can only
    match a test id that has that very text before its first "::", so each test id is tried only
    against the globs of its own file and those whose file part has a wildcard (or no "::")."""

    def __init__(self, issues):
        self.issues = list(issues)
        self._by_file: dict[str, list[tuple[int, re.Pattern]]] = {}
        self._anywhere: list[tuple[int, re.Pattern]] = []
        for n, issue in enumerate(self.issues):
            # an entry made without its compiled globs matches nothing, as in matches_test
            for glob, pattern in zip(issue.tests, issue._patterns, strict=False):
                file, sep, _ = glob.partition("::")
                if sep and "*" not in file and "?" not in file:
                    self._by_file.setdefault(file, []).append((n, pattern))
                else:
                    self._anywhere.append((n, pattern))
        self._merged: dict[str, list[tuple[int, re.Pattern]]] = {}  # file -> its globs and the others, in entry order

    def first(self, nodeid: str) -> "KnownIssue | None":
        """The first entry with a glob that matches `nodeid` (KnownIssue.matches_test), or None."""
        file = nodeid.partition("::")[0]
        candidates = self._merged.get(file)
        if candidates is None:
            candidates = sorted(self._by_file.get(file, []) + self._anywhere, key=lambda c: c[0])
            self._merged[file] = candidates
        for n, pattern in candidates:
            if pattern.fullmatch(nodeid):
                return self.issues[n]
        return None


def glob_to_regex(pattern: str) -> re.Pattern:
    """Test-id globs: `*` and `?` are wildcards; brackets are literal (test ids contain them)."""
    return re.compile(re.escape(pattern).replace(r"\*", ".*").replace(r"\?", "."))


def kernel_tuple(release: str) -> tuple[int, ...]:
    """A kernel release's leading version numbers as a tuple ("6.10.3-fc1" -> (6, 10, 3)); () if none."""
    m = re.match(r"(\d+(?:\.\d+)*)", release)
    return tuple(int(x) for x in m.group(1).split(".")) if m else ()


def host_matches(host: dict, fp: dict) -> bool:
    """Whether fingerprint `fp` satisfies host predicate `host`: each key present (module, backend,
    vendor, mmu, accelerator, kernel_min, kernel_max compared only to as many parts as it names,
    params as "module.param" -> value) must match; an empty predicate matches every host."""
    modules = fp.get("modules", {})
    if "module" in host and host["module"] not in modules:
        return False
    if "backend" in host and fp.get("backend") != host["backend"]:
        return False
    if "vendor" in host and fp.get("cpu", {}).get("vendor") != host["vendor"]:
        return False
    if "mmu" in host and fp.get("mmu", {}).get("mode") != host["mmu"]:
        return False
    if "accelerator" in host and fp.get("accelerator", "none") != host["accelerator"]:
        return False
    release = kernel_tuple(fp.get("kernel", {}).get("release", ""))
    if "kernel_min" in host and release < kernel_tuple(host["kernel_min"]):
        return False
    # kernel_max "6.10" covers every 6.10.y: compare only as many parts as it names
    if "kernel_max" in host and release[:len(kernel_tuple(host["kernel_max"]))] > kernel_tuple(host["kernel_max"]):
        return False
    for key, want in host.get("params", {}).items():
        module, _, param = key.partition(".")
        if modules.get(module, {}).get(param) != str(want):
            return False
    return True


def _entry_lines(text: str) -> list[int]:
    return [n for n, line in enumerate(text.splitlines(), start=1) if line.strip() == "[[issue]]"]


def load(path: str | Path) -> list[KnownIssue]:
    """The entries of the known-issue TOML file at `path`; KnownIssueError naming the file (and the
    entry's line) for a file that cannot be read or an entry that is malformed."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise KnownIssueError(f"known-issue file {path}: cannot read: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise KnownIssueError(f"known-issue file {path}: not UTF-8 text (byte {e.start}: {e.reason})") from None
    return load_text(text, path)


def load_text(text: str, path: Path) -> list[KnownIssue]:
    """Parse and validate the text of known-issue file `path` (named in every error)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise KnownIssueError(f"known-issue file {path}: {e}") from None
    unknown_top = set(data) - {"issue"}
    if unknown_top:
        raise KnownIssueError(f"known-issue file {path}: unknown top-level key(s) {sorted(unknown_top)}; "
                              "entries go in [[issue]] tables")
    lines = _entry_lines(text)
    issues, seen = [], set()
    for index, entry in enumerate(data.get("issue", [])):
        where = f"known-issue file {path} line {lines[index] if index < len(lines) else '?'}"
        issues.append(_validate(entry, where, f"{path.name}:{lines[index] if index < len(lines) else '?'}"))
        if issues[-1].id in seen:
            raise KnownIssueError(f"{where}: duplicate id {issues[-1].id!r}")
        seen.add(issues[-1].id)
    return issues


def _validate(entry: dict, where: str, source: str) -> KnownIssue:
    name = entry.get("id", "?")
    where = f"{where} (issue {name!r})"
    unknown = set(entry) - _ISSUE_KEYS
    if unknown:
        raise KnownIssueError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(_ISSUE_KEYS)}")
    for key in ("id", "reason"):
        if not isinstance(entry.get(key), str) or not entry[key].strip():
            raise KnownIssueError(f"{where}: '{key}' must be a non-empty string")
    tests = entry.get("tests")
    if not isinstance(tests, list) or not tests or not all(isinstance(t, str) and t for t in tests):
        raise KnownIssueError(f"{where}: 'tests' must be a non-empty list of test-id globs")
    host = entry.get("host")
    if not isinstance(host, dict) or not host:
        raise KnownIssueError(f"{where}: 'host' must be a table naming at least one host property")
    if set(host) - _HOST_KEYS:
        raise KnownIssueError(f"{where}: unknown host key(s) {sorted(set(host) - _HOST_KEYS)}; "
                              f"allowed: {sorted(_HOST_KEYS)}")
    if "params" in host and not isinstance(host["params"], dict):
        raise KnownIssueError(f"{where}: 'host.params' must be a table of module.param = value")
    _validate_host_values(host, where)
    evidence = entry.get("evidence")
    if not isinstance(evidence, dict):
        raise KnownIssueError(f"{where}: 'evidence' table is missing")
    for key in sorted(_EVIDENCE_KEYS):
        if not isinstance(evidence.get(key), str) or not evidence[key].strip():
            raise KnownIssueError(f"{where}: 'evidence.{key}' must say {_EVIDENCE_HELP[key]}")
    if set(evidence) - _EVIDENCE_KEYS:
        raise KnownIssueError(f"{where}: unknown evidence key(s) {sorted(set(evidence) - _EVIDENCE_KEYS)}")
    intermittent = entry.get("intermittent", False)
    if not isinstance(intermittent, bool):
        raise KnownIssueError(f"{where}: 'intermittent' must be true or false")
    seen = _validate_seen(entry.get("seen", []), where)
    run = entry.get("run", True)
    if not isinstance(run, bool):
        raise KnownIssueError(f"{where}: 'run' must be true or false (false: the test takes the host down there)")
    if not run and intermittent:
        raise KnownIssueError(f"{where}: an entry that is not run cannot be intermittent")
    hang_timeout = _validate_hang_timeout(entry.get("hang_timeout"), run, where)
    return KnownIssue(entry["id"], tuple(tests), entry["reason"], host, evidence, source,
                      entry.get("url"), entry.get("commit"), intermittent, seen, run, hang_timeout,
                      tuple(glob_to_regex(t) for t in tests))


HANG_TIMEOUT_MAX = 5.0  # seconds: a "hang" timeout longer than this saves nothing worth an entry key


def _validate_hang_timeout(value, run: bool, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= HANG_TIMEOUT_MAX:
        raise KnownIssueError(f"{where}: 'hang_timeout' must be a number of seconds above 0 and at most "
                              f"{HANG_TIMEOUT_MAX:g}, got {value!r}")
    if not run:
        raise KnownIssueError(f"{where}: an entry that is not run cannot have a 'hang_timeout'")
    return float(value)


# What the fingerprint can hold for the host keys with a closed set of values (kvmtest.fingerprint).
_HOST_CHOICES = {
    "mmu": {"ept", "ept-tdp-mmu", "npt", "npt-tdp-mmu", "shadow", "unknown"},
    "backend": {"kvm_intel", "kvm_amd", "kvm_pvm", "unknown"},
    "accelerator": {"none", "tcg", "kvm"},
}
_RELEASE = re.compile(r"\d+(\.\d+)*")
# A [[issue.seen]] result says the deviation showed: what `kvmtest known-issues verify` writes.
_SEEN_RESULT = re.compile(r"(?P<n>\d+) of (?P=n) tests failed( \(\d+ skipped here\))?|failed in [1-9]\d* of \d+ runs")


def _validate_host_values(host: dict, where: str) -> None:
    for key in sorted(set(host) - {"params"}):
        value = host[key]
        if not isinstance(value, str) or not value:
            raise KnownIssueError(f"{where}: 'host.{key}' must be a non-empty string, not {value!r}")
        if key in _HOST_CHOICES and value not in _HOST_CHOICES[key]:
            raise KnownIssueError(f"{where}: 'host.{key}' {value!r} is none of {sorted(_HOST_CHOICES[key])}")
        if key in ("kernel_min", "kernel_max") and not _RELEASE.fullmatch(value):
            raise KnownIssueError(f"{where}: 'host.{key}' {value!r} is not a kernel version like \"6.11\" or "
                                  "\"6.10.999\"")


def _validate_seen(seen, where: str) -> tuple[dict, ...]:
    if not isinstance(seen, list) or not all(isinstance(s, dict) for s in seen):
        raise KnownIssueError(f"{where}: 'seen' must be [[issue.seen]] tables (build, date, result)")
    for record in seen:
        if set(record) != _SEEN_KEYS:
            raise KnownIssueError(f"{where}: each [[issue.seen]] needs exactly {sorted(_SEEN_KEYS)}, "
                                  f"got {sorted(record)}")
        bad = [k for k in sorted(_SEEN_KEYS) if not isinstance(record[k], str) or not record[k].strip()]
        if bad:
            raise KnownIssueError(f"{where}: [[issue.seen]] {', '.join(bad)} must be non-empty strings")
        if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", record["date"]):
            raise KnownIssueError(f"{where}: [[issue.seen]] date {record['date']!r} is not YYYY-MM-DD")
        if not _SEEN_RESULT.fullmatch(record["result"]):
            raise KnownIssueError(f"{where}: [[issue.seen]] result {record['result']!r} does not say the deviation "
                                  "showed: write 'N of N tests failed' or 'failed in K of R runs' (K > 0), as "
                                  "`kvmtest known-issues verify --write` does")
    return tuple(dict(s) for s in seen)


_EVIDENCE_HELP = {
    "contract": "what api.rst or the SDM/APM requires",
    "observed": "what the host did (exit, errno, values)",
    "proof": "how it was shown to be the host and not kvmtest",
}


def builtin_files() -> list[Path]:
    """The known-issue files shipped in kvmtest/known_issues/, sorted by name."""
    return sorted(BUILTIN_DIR.glob("*.toml"))


def load_all(paths) -> list[KnownIssue]:
    """The entries of every file in `paths`, in order (KnownIssueError as load())."""
    issues = []
    for p in paths:
        issues.extend(load(p))
    return issues
