"""known_issues.IssueIndex, which the plugin asks which entry covers each collected test, must give
what trying every entry's globs in order gives (KnownIssue.matches_test, first entry wins)."""

from pathlib import Path

import pytest
from suite_ids import collected

from kvmtest import known_issues


def _linear(issues, nodeid):
    return next((i for i in issues if i.matches_test(nodeid)), None)


def _entries(*globs_per_entry):
    text = "".join(f'''
[[issue]]
id = "e{n}"
tests = [{", ".join(f'"{g}"' for g in globs)}]
reason = "r"
[issue.host]
module = "kvm"
[issue.evidence]
contract = "c"
observed = "o"
proof = "p"
''' for n, globs in enumerate(globs_per_entry))
    return known_issues.load_text(text, Path("index.toml"))


def test_the_shipped_entries_cover_the_same_suite_tests_either_way():
    issues = known_issues.load_all(known_issues.builtin_files())
    index = known_issues.IssueIndex(issues)
    ids = collected()
    got = {i: getattr(index.first(i), "id", None) for i in ids}
    want = {i: getattr(_linear(issues, i), "id", None) for i in ids}
    assert got == want
    assert sum(v is not None for v in want.values()) > 100  # the comparison covered many xfails


@pytest.mark.parametrize("nodeid,entry", [
    ("suites/a/test_x.py::test_one[long64]", "e0"),   # e0's wildcard file part is tried too, and wins over e1
    ("suites/a/test_x.py::test_two", "e2"),
    ("suites/b/test_y.py::test_one[long64]", "e0"),
    ("suites/a/test_x.py::test_three[pae]", "e3"),
    ("suites/d/test_w.py::test_k[pae]", "e3"),       # a glob without "::" is tried on every file
    ("suites/a/test_z.py::test_two", None),
    ("suites/a/test_x.py", None),
    ("suites/c/test_q.py::T::test_m[a]", "e4"),
])
def test_index_keeps_entry_order_across_literal_and_wildcard_files(nodeid, entry):
    issues = _entries(["suites/b/*::test_one*", "suites/a/test_?.py::test_one*"],
                      ["suites/a/test_x.py::test_one[long64]"],
                      ["suites/a/test_x.py::test_two"],
                      ["suites/a/test_x.py::test_three*", "*[pae]"],
                      ["suites/c/test_q.py::T::test_m[[]a]", "suites/c/test_q.py::T::test_m[a]"])
    index = known_issues.IssueIndex(issues)
    assert getattr(index.first(nodeid), "id", None) == entry
    assert getattr(_linear(issues, nodeid), "id", None) == entry
