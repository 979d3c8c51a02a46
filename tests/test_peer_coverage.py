"""suites/peers.toml, the map from each kvm-unit-tests and KVM selftests program to the kvmtest
tests that check the same, against its schema, the suites and the READMEs it is rendered into:
every test it names must exist (a renamed or deleted test fails here), every benchmark file too,
and the generated tables and figures must be what the file renders to now."""

import re

import pytest
from suite_ids import ROOT, collected, unmatched

from kvmtest import peers

GOOD = """
[[program]]
peer = "selftests"
name = "x86/example_test"
area = "memory"
checks = "Something."
status = "partial"
tests = ["suites/memory/test_memslots.py::*"]
missing = "The rest."
"""


@pytest.fixture(scope="module")
def programs():
    return peers.load()


def test_the_map_follows_its_schema(programs):
    """Loading validates every entry (peers.load raises PeersFileError on the first fault): the
    map is not empty for either peer."""
    assert {p.peer for p in programs} == set(peers.PEERS)


def test_every_mapped_test_exists(programs):
    ids = collected()
    dead = [f"{p.peer} {p.name}: {t}" for p in programs for t in unmatched(p.tests, ids)]
    assert not dead, "suites/peers.toml names tests that are not collected:\n  " + "\n  ".join(dead)


def test_a_test_that_no_longer_exists_is_reported():
    """The check above can fail: a pattern naming no collected test is reported, one naming a
    test (or, with a glob, its parametrizations) is not."""
    ids = ("suites/a/test_x.py::test_one[long64]", "suites/a/test_x.py::test_two")
    assert unmatched(["suites/a/test_x.py::test_one[*]", "suites/a/test_x.py::test_two",
                      "suites/a/test_x.py::test_gone", "suites/a/test_x.py::test_one"], ids) == \
        ["suites/a/test_x.py::test_gone", "suites/a/test_x.py::test_one"]


def test_every_benchmark_exists(programs):
    missing = [f"{p.name}: {b}" for p in programs for b in p.benchmarks if not (ROOT / b).is_file()]
    assert not missing, f"suites/peers.toml names benchmark files that do not exist: {missing}"


def test_readmes_are_what_the_map_renders_to():
    stale = peers.stale()
    assert not stale, "generated peer sections differ from suites/peers.toml (run `python -m kvmtest.peers`): " + \
        ", ".join(str(p.relative_to(ROOT)) for p in stale)


def test_the_figures_in_suites_readme_are_counted_from_the_map(programs):
    """The summary row for all programs agrees with a count made here, independently of
    peers.figures."""
    text = (ROOT / "suites" / "README.md").read_text()
    in_scope = [p for p in programs if p.status != "out-of-scope"]
    full = sum(p.status == "full" for p in in_scope)
    partial = sum(p.status == "partial" for p in in_scope)
    runnable = [p for p in in_scope if not p.needs]
    full_here = sum(p.status == "full" for p in runnable)
    want = {"programs listed": len(programs), "in scope": len(in_scope), "full equivalent": full,
            "of which leave out only assertions no document defines (`undocumented`)":
                sum(bool(p.undocumented) for p in in_scope),
            "full equivalent among those": full_here,
            "full equivalents among those, share": f"{100 * full_here / len(runnable):.0f} %",
            "partial equivalent": partial, "no equivalent yet": sum(p.status == "none" for p in in_scope),
            "coverage, (full + partial / 2) / in scope": f"{100 * (full + partial / 2) / len(in_scope):.0f} %"}
    for label, value in want.items():
        row = re.search(rf"^\| {re.escape(label)} \|.*\| ([^|]+) \|$", text, re.MULTILINE)
        assert row and row.group(1).strip() == str(value), \
            f"suites/README.md row {label!r}: {row and row.group(1).strip()!r}, counted {value!r}"


BAD = [
    ("unknown-status", ('status = "partial"', 'status = "most"'), "status 'most'"),
    ("partial-without-missing", ('missing = "The rest."\n', ""), "`missing`"),
    ("full-with-missing", ('status = "partial"', 'status = "full"'), "no `missing`"),
    ("none-with-tests", ('status = "partial"', 'status = "none"'), "names no tests"),
    ("out-of-scope-without-reason", ('status = "partial"', 'status = "out-of-scope"'), "`reason`"),
    ("unknown-field", ('missing =', 'misisng = "x"\nmissing ='), "unknown field"),
    ("unknown-area", ('area = "memory"', 'area = "nowhere"'), "'nowhere'"),
    ("unknown-peer", ('peer = "selftests"', 'peer = "ltp"'), "peer 'ltp'"),
    ("kvm-unit-tests-without-sections", ('peer = "selftests"', 'peer = "kvm-unit-tests"'), "`sections`"),
    ("tests-not-a-list", ('tests = ["suites/memory/test_memslots.py::*"]', 'tests = "suites/x"'), "`tests`"),
    # What a program leaves out that a document defines is `missing`; `undocumented` cannot stand in for it
    ("partial-with-undocumented", ('missing =', 'undocumented = "KVM policy."\nmissing ='),
     "for a full equivalent only"),
    ("empty-undocumented", ('status = "partial"\ntests = ["suites/memory/test_memslots.py::*"]\nmissing = "The rest."',
                            'status = "full"\ntests = ["suites/memory/test_memslots.py::*"]\nundocumented = " "'),
     "non-empty"),
]


@pytest.mark.parametrize("change, fragment", [(c, f) for _, c, f in BAD], ids=[b[0] for b in BAD])
def test_a_malformed_entry_is_refused_naming_the_program(tmp_path, change, fragment):
    path = tmp_path / "peers.toml"
    path.write_text(GOOD.replace(*change))
    with pytest.raises(peers.PeersFileError) as e:
        peers.load(path)
    assert "x86/example_test" in str(e.value) and fragment in str(e.value), str(e.value)


def test_a_program_listed_twice_is_refused(tmp_path):
    path = tmp_path / "peers.toml"
    path.write_text(GOOD + GOOD)
    with pytest.raises(peers.PeersFileError, match="program 2 .*listed twice"):
        peers.load(path)


def test_the_good_example_loads(tmp_path):
    """The base of the malformed cases above is itself valid, so each refusal is its change's."""
    path = tmp_path / "peers.toml"
    path.write_text(GOOD)
    assert [p.name for p in peers.load(path)] == ["x86/example_test"]
