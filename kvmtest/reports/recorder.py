"""The pytest-side recorder: collects every phase report on the controller (so it works
under pytest-xdist) and writes the JUnit, KTAP and HTML reports at the end of the session."""

import datetime
import re
import tempfile
from pathlib import Path

import pytest

from .. import fingerprint as fpmod
from . import html as html_report
from . import junit, ktap


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "unknown"


def report_stem(report_dir: str, fp: dict) -> Path:
    """DIR/kvmtest-<host>-<kernel>-<time> (+ .xml, .ktap, .html)"""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    kernel = (fp.get("kernel") or {}).get("release", "unknown")
    return Path(report_dir) / f"kvmtest-{_safe(fp.get('host', 'unknown'))}-{_safe(kernel)}-{stamp}"


def report_paths(settings: dict, fp: dict) -> dict[str, str]:
    """--kvm-junit/--kvm-ktap/--kvm-html where given; with --kvm-report-dir, the others go there
    under one stem; without it, only the named ones are written."""
    stem = report_stem(settings["kvm_report_dir"], fp) if settings.get("kvm_report_dir") else None
    paths = {}
    for kind, suffix in (("junit", ".xml"), ("ktap", ".ktap"), ("html", ".html")):
        path = settings.get(f"kvm_{kind}") or (f"{stem}{suffix}" if stem else "")
        if path:
            paths[kind] = path
    return paths


def unwritable(path, directory: bool = False) -> str:
    """Why a report cannot be written at `path` (with `directory`, into the directory `path`), as
    "PATH: reason", or "" when it can. Checked before a run, not after it, by doing what writing
    the report does (make the missing directories, create the file); what it had to create to
    find out is removed again (the writers make their directories themselves)."""
    p = Path(path)
    folder = p if directory else p.parent
    made = [d for d in (folder, *folder.parents) if not d.exists()]  # deepest first
    try:
        if folder.exists() and not folder.is_dir():
            return f"{path}: {folder} is not a directory"
        folder.mkdir(parents=True, exist_ok=True)
        if directory:
            tempfile.TemporaryFile(dir=folder).close()  # the reports are new files in it
        else:
            existed = p.exists()
            with open(p, "a"):
                pass
            if not existed:
                p.unlink()
    except OSError as e:
        return f"{path}: {e.strerror or e}"
    finally:
        for d in made:
            try:
                d.rmdir()
            except OSError:
                break  # not made here after all, or no longer empty
    return ""


_baselines: dict[tuple, list] = {}  # `kvmtest run` checks the baseline; its plugin then uses what was read


def load_baseline(paths) -> list:
    """The baseline runs' results (reports.results.read_any), read once per process and before the
    run; raises ReportError naming the file that is no JUnit report."""
    from .results import read_any

    key = tuple(str(Path(p).resolve()) for p in paths)
    if key not in _baselines:
        _baselines[key] = read_any(paths)
    return _baselines[key]


def check(settings: dict, fp: dict) -> list:
    """Refuse report paths that cannot be written and a baseline that cannot be read, before any
    test runs (pytest.UsageError naming the option and the path); returns the baseline's results."""
    from .results import ReportError

    problems = []
    if settings.get("kvm_report_dir"):
        problems.append(("--kvm-report-dir", unwritable(settings["kvm_report_dir"], directory=True)))
    for kind, path in report_paths(settings, fp).items():
        problems.append((f"--kvm-{kind}", unwritable(path)))
    for flag, problem in problems:
        if problem:
            raise pytest.UsageError(f"{flag} {problem}")
    baseline = [p.strip() for p in settings.get("kvm_baseline", "").split(",") if p.strip()]
    try:
        return load_baseline(baseline) if baseline else []
    except ReportError as e:
        raise pytest.UsageError(f"--kvm-baseline: {e}") from None


# A note every "kvmtest report:" line of the session carries: set by a plugin whose session writes
# files someone else merges and removes (kernelvm.progress, --kvm-vm-merged-into), so the console
# never points at a file as if it were the run's report.
NOTE_KEY = pytest.StashKey[str]()


def register(config, settings: dict, fp: dict) -> None:
    """Record this session's reports when any is asked for (called on the controller only); refuses
    an unwritable report path or an unreadable baseline first (check)."""
    baseline = check(settings, fp)
    paths = report_paths(settings, fp)
    if paths:
        config.pluginmanager.register(RunRecorder(config, fp, junit_path=paths.get("junit", ""),
                                                  ktap_path=paths.get("ktap", ""), html_path=paths.get("html", ""),
                                                  baseline=baseline), "kvmtest-reports")


class RunRecorder:
    def __init__(self, config, fp: dict, *, junit_path="", ktap_path="", html_path="", baseline=()):
        self.config, self.fp = config, fp
        self.junit_path, self.ktap_path, self.html_path = junit_path, ktap_path, html_path
        self.baseline = list(baseline)  # the baseline runs' results (load_baseline)
        self.outcomes: dict[str, junit.Outcome] = {}
        self.written: list[str] = []
        self.started = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")  # the run's date
        self.expected: list[str] = []  # the test ids the run set out to run, for telling a cut-short run
        self.finished: set[str] = set()  # tests whose teardown was reported: every phase ran

    def pytest_runtest_logreport(self, report):
        junit.record(self.outcomes, report)
        if report.when == "teardown":
            self.finished.add(report.nodeid)

    def pytest_collectreport(self, report):
        """A file that fails to collect (an import error, a syntax error) is an error in every report,
        named by its path, as pytest's own JUnit has it: else only its neighbours would show, as
        unfinished, and nothing would say why."""
        if report.failed:
            o = self.outcomes.setdefault(report.nodeid, junit.Outcome(report.nodeid))
            text = str(report.longrepr or "").strip()
            o.status = "error"
            last = text.splitlines()[-1].removeprefix("E").strip() if text else "failed to collect"
            o.message = f"collection error: {last}"
            o.details = text

    def pytest_collection_finish(self, session):
        self.expected = [item.nodeid for item in session.items]

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_node_collection_finished(self, node, ids):
        if not self.expected:  # every worker collects the same ids
            self.expected = list(ids)

    def _mark_unfinished(self, exitstatus) -> None:
        """A test the run collected but never reported (Ctrl-C, an internal error, a worker that died)
        is an error in every report: a cut-short run must never read as a green one."""
        why = {pytest.ExitCode.INTERRUPTED: "the run was interrupted",
               pytest.ExitCode.INTERNAL_ERROR: "pytest stopped on an internal error"}.get(exitstatus,
                                                                                      "the run ended first")
        from ..shard_claims import CLAIMED_KEY

        # a host shard set out to run only what it claimed (what nobody ran, one shard claims at its end)
        for nodeid in self.config.stash.get(CLAIMED_KEY, self.expected):
            outcome = self.outcomes.setdefault(nodeid, junit.Outcome(nodeid))
            if nodeid not in self.finished and outcome.status not in ("failed", "error"):
                outcome.status, outcome.message = "error", f"no result: {why} before this test finished"

    def results(self):
        from .results import run_host

        # labelled as read_junit labels this run's file, so a baseline from this host compares as one
        return junit.to_results(self.outcomes, run_host(self.fp.get("host", ""),
                                                         (self.fp.get("kernel") or {}).get("release")))

    def pytest_sessionfinish(self, session, exitstatus):
        self._mark_unfinished(exitstatus)
        if self.junit_path:
            junit.write(self.junit_path, [junit.build_suite(self.outcomes, self.fp)])
            self.written.append(f"JUnit {self.junit_path}")
        results = self.results()
        if self.ktap_path:
            Path(self.ktap_path).parent.mkdir(parents=True, exist_ok=True)
            Path(self.ktap_path).write_text(ktap.render(results, [f"kvmtest on {fpmod.short(self.fp)}"]))
            self.written.append(f"KTAP {self.ktap_path}")
        if self.html_path:
            comparison = None
            if self.baseline:
                from .compare import compare

                comparison = compare(self.baseline, results)
            Path(self.html_path).parent.mkdir(parents=True, exist_ok=True)
            from ..plugin import ISSUES_KEY

            Path(self.html_path).write_text(html_report.render(results, self.fp, comparison,
                                                               title=f"kvmtest: {fpmod.short(self.fp)}",
                                                               issues=self.config.stash.get(ISSUES_KEY, []),
                                                               date=self.started))
            self.written.append(f"HTML {self.html_path}")

    def pytest_terminal_summary(self, terminalreporter):
        note = self.config.stash.get(NOTE_KEY, "")
        for line in self.written:
            terminalreporter.write_line(f"kvmtest report: {line}" + (f" ({note})" if note else ""))
