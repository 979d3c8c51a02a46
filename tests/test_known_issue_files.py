"""The shipped known-issue files against the suites: every test pattern of every entry must
name at least one test that exists, so a renamed or deleted test cannot leave a dead xfail
behind (and an entry cannot silently stop covering what its evidence describes)."""

import pytest
from suite_ids import collected, unmatched

from kvmtest import known_issues


@pytest.fixture(scope="module")
def suite_ids():
    return collected()


@pytest.mark.parametrize("path", known_issues.builtin_files(), ids=lambda p: p.name)
def test_every_known_issue_pattern_names_an_existing_test(path, suite_ids):
    dead = [f"{issue.id}: {pattern}" for issue in known_issues.load(path)
            for pattern in unmatched(issue.tests, suite_ids)]
    assert not dead, f"{path.name}: patterns that match no collected test:\n  " + "\n  ".join(dead)
