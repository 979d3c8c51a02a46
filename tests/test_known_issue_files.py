"""The shipped known-issue files against the suites: every test pattern of every entry must
name at least one test that exists, so a renamed or deleted test cannot leave a dead xfail
behind (and an entry cannot silently stop covering what its evidence describes)."""

import subprocess
import sys
from pathlib import Path

import pytest

from kvmtest import known_issues

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def suite_ids():
    # Collection needs no /dev/kvm: mode parametrization and markers are resolved without it.
    out = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                          "-p", "no:xdist", "suites"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    ids = [line for line in out.stdout.splitlines() if line.startswith("suites/") and "::" in line]
    assert ids, f"collecting the suites found nothing:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}"
    return ids


@pytest.mark.parametrize("path", known_issues.builtin_files(), ids=lambda p: p.name)
def test_every_known_issue_pattern_names_an_existing_test(path, suite_ids):
    dead = []
    for issue in known_issues.load(path):
        for pattern in issue.tests:
            regex = known_issues.glob_to_regex(pattern)
            if not any(regex.fullmatch(i) for i in suite_ids):
                dead.append(f"{issue.id}: {pattern}")
    assert not dead, f"{path.name}: patterns that match no collected test:\n  " + "\n  ".join(dead)
