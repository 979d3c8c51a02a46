"""The pytest-side recorder: collects every phase report on the controller (so it works
under pytest-xdist) and writes the JUnit, KTAP and HTML reports at the end of the session."""

from pathlib import Path

from .. import fingerprint as fpmod
from . import html as html_report
from . import junit, ktap


class RunRecorder:
    def __init__(self, config, fp: dict, *, junit_path="", ktap_path="", html_path="", baseline=()):
        self.config, self.fp = config, fp
        self.junit_path, self.ktap_path, self.html_path = junit_path, ktap_path, html_path
        self.baseline = list(baseline)
        self.outcomes: dict[str, junit.Outcome] = {}
        self.written: list[str] = []

    def pytest_runtest_logreport(self, report):
        junit.record(self.outcomes, report)

    def results(self):
        return junit.to_results(self.outcomes, self.fp.get("host", ""))

    def pytest_sessionfinish(self, session):
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
                from .results import read_any

                comparison = compare(read_any(self.baseline), results)
            Path(self.html_path).parent.mkdir(parents=True, exist_ok=True)
            Path(self.html_path).write_text(html_report.render(results, self.fp, comparison,
                                                               title=f"kvmtest: {fpmod.short(self.fp)}"))
            self.written.append(f"HTML {self.html_path}")

    def pytest_terminal_summary(self, terminalreporter):
        for line in self.written:
            terminalreporter.write_line(f"kvmtest report: {line}")
