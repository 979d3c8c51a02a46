"""suites/state/field_coverage.toml against the ABI and the suites: every field of every state
structure kvmtest reads from KVM is checked by a named suite test against a source KVM does not
control, or says why it cannot be; every KVM_GET_* ioctl kvmtest defines is accounted for; every
test the table names exists and its source refers to the fields it is named for (tests/field_refs.py
gives the rule). A field added to kvmtest/abi/structs.py, or a KVM_GET_* ioctl added to
kvmtest/abi/numbers.py, fails here until the table says what checks it. Fields whose every test is
skipped or a known-issue xfail on this host are reported (a warning), not failed."""

import ast
import ctypes
import fnmatch
import importlib.util
import os
import re
import subprocess
import sys
import tomllib
import warnings
from pathlib import Path

import pytest
from field_refs import refers, suite_test_words

from kvmtest import fingerprint, known_issues
from kvmtest.abi import structs as S
from kvmtest.abi.numbers import IOCTLS
from kvmtest.guest.modes import MODES

ROOT = Path(__file__).resolve().parent.parent
TABLE = ROOT / "suites" / "state" / "field_coverage.toml"
PADDING = ("pad", "padding", "reserved")   # name prefixes of padding, which carries no state
# The xAPIC register page, SDM Vol. 3A Table 11-1 (offsets of the 32-bit registers, first of a bank).
APIC_REGISTERS = (0x020, 0x030, 0x080, 0x090, 0x0A0, 0x0B0, 0x0C0, 0x0D0, 0x0E0, 0x0F0, 0x100, 0x180, 0x200,
                  0x280, 0x2F0, 0x300, 0x310, 0x320, 0x330, 0x340, 0x350, 0x360, 0x370, 0x380, 0x390, 0x3E0)


def _table():
    with open(TABLE, "rb") as f:
        return tomllib.load(f)


def field_paths(struct_type, roots, prefix=""):
    """Dotted paths of every field of a ctypes structure: nested structures (and arrays of them)
    expanded, unless the nested type is itself a root of the table; unions and scalar arrays kept
    whole; padding left out."""
    out = []
    for name, ftype, *_ in struct_type._fields_:
        if name.startswith(PADDING):
            continue
        base = ftype
        while issubclass(base, ctypes.Array):
            base = base._type_
        path = prefix + name
        if issubclass(base, ctypes.Structure) and base.__name__ not in roots:
            out += field_paths(base, roots, path + ".")
        else:
            out.append(path)
    return out


def _entry_for(path, entries):
    return next((e for e in entries if any(fnmatch.fnmatchcase(path, p) for p in e["match"])), None)


def test_table_entries_are_well_formed():
    t = _table()
    bad = []
    for kind in ("struct", "value", "apic_register"):
        for item in t.get(kind, []):
            entries = item.get("field", []) if kind == "struct" else [item]
            for e in entries:
                where = f"{kind} {item.get('name', e.get('match'))}"
                if ("tests" in e) == ("unchecked" in e):
                    bad.append(f"{where}: give either tests or unchecked")
                elif "tests" in e and not e["tests"]:
                    bad.append(f"{where}: empty tests")
                elif "unchecked" in e and len(e["unchecked"].strip()) < 20:
                    bad.append(f"{where}: unchecked needs a reason")
                if "via" in e and (kind != "struct" or "tests" not in e or not e["via"]):
                    bad.append(f"{where}: via (accessor names) belongs to a struct field entry with tests")
    assert not bad, "\n".join(bad)


def test_every_field_of_every_struct_has_an_entry():
    t = _table()
    roots = {s["name"] for s in t["struct"]}
    missing, stale = [], []
    for s in t["struct"]:
        struct_type = getattr(S, s["name"], None)
        assert struct_type is not None, f"[[struct]] {s['name']} is not in kvmtest/abi/structs.py"
        paths = field_paths(struct_type, roots)
        missing += [f"{s['name']}.{p}" for p in paths if _entry_for(p, s["field"]) is None]
        stale += [f"{s['name']}: {pattern}" for e in s["field"] for pattern in e["match"]
                  if not any(fnmatch.fnmatchcase(p, pattern) for p in paths)]
    assert not missing, "fields with no entry in field_coverage.toml:\n  " + "\n  ".join(missing)
    assert not stale, "entries that match no field (renamed or removed?):\n  " + "\n  ".join(stale)


def test_every_get_ioctl_is_accounted_for():
    t = _table()
    named = {i for s in t["struct"] for i in s["ioctls"]} | {v["name"] for v in t["value"]}
    unknown = sorted(n for n in named if n.startswith("KVM_") and not n.startswith("KVM_CAP_") and n not in IOCTLS)
    assert not unknown, f"field_coverage.toml names ioctls kvmtest does not define: {unknown}"
    gets = sorted(n for n in IOCTLS if n.startswith("KVM_GET_") or n == "KVM_TRANSLATE")
    missing = [n for n in gets if n not in named]
    assert not missing, "KVM_GET_* ioctls with no [[struct]] or [[value]] in field_coverage.toml: " + ", ".join(missing)


def test_every_apic_register_has_an_entry():
    t = _table()
    offsets = [int(m.split()[0], 16) for e in t["apic_register"] for m in e["match"]]
    missing = [f"{o:#05x}" for o in APIC_REGISTERS if o not in offsets]
    assert not missing, f"xAPIC registers (SDM Table 11-1) with no [[apic_register]] entry: {missing}"


def _suite_functions():
    names = {}
    for path in sorted((ROOT / "suites").rglob("test_*.py")):
        rel = path.relative_to(ROOT).as_posix()
        spec = importlib.util.spec_from_file_location(f"_coverage_{rel.replace('/', '_')[:-3]}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        names[rel] = {n for n in dir(module) if n.startswith("test_") and callable(getattr(module, n))}
    return names


@pytest.fixture(scope="module")
def suite_functions():
    return _suite_functions()


def test_every_named_test_exists(suite_functions):
    t = _table()
    named = [test for s in t["struct"] for e in s["field"] for test in e.get("tests", [])]
    named += [test for kind in ("value", "apic_register") for e in t[kind] for test in e.get("tests", [])]
    dead = sorted({n for n in named if n.split("::")[1] not in suite_functions.get(n.split("::")[0], ())})
    assert not dead, "tests named in field_coverage.toml that do not exist:\n  " + "\n  ".join(dead)


def _kvmtest_definitions():
    """Names of every function, method and class defined in kvmtest/."""
    names = set()
    for path in (ROOT / "kvmtest").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
    return names


def _entry_paths(s, e, roots):
    """The field paths of [[struct]] `s` whose entry is `e` (the first entry that matches them)."""
    return [p for p in field_paths(getattr(S, s["name"]), roots) if _entry_for(p, s["field"]) is e]


def _test_refers(node_id, path, via):
    """Whether the suite test refers to the field path, by name or through one of `via`."""
    words = suite_test_words(ROOT, node_id)
    return refers(words, path) or bool(words & set(via))


def test_every_named_test_refers_to_its_fields():
    """Each field of an entry with tests is referred to by at least one of them, and each test
    an entry names refers to at least one of the entry's fields (tests/field_refs.py): a test
    named for a field it never reads or sets does not check it. `via` lists the kvmtest
    functions, methods or classes that read or write the field for a test (get_mp_state returns
    kvm_mp_state.mp_state); each must be defined in kvmtest/."""
    t = _table()
    roots = {s["name"] for s in t["struct"]}
    defined = _kvmtest_definitions()
    unreferenced, idle, unknown_via = [], [], []
    for s in t["struct"]:
        for e in s["field"]:
            if "tests" not in e:
                continue
            via = e.get("via", [])
            unknown_via += [f"{s['name']} {e['match']}: via {v!r}" for v in via if v not in defined]
            paths = _entry_paths(s, e, roots)
            unreferenced += [f"{s['name']}.{p} (named: {', '.join(n.split('::')[1] for n in e['tests'])})"
                             for p in paths if not any(_test_refers(n, p, via) for n in e["tests"])]
            idle += [f"{s['name']} {e['match']}: {n}" for n in e["tests"]
                     if not any(_test_refers(n, p, via) for p in paths)]
    assert not unknown_via, "via names that kvmtest/ does not define:\n  " + "\n  ".join(unknown_via)
    assert not unreferenced, "fields none of whose named tests refers to them:\n  " + "\n  ".join(unreferenced)
    assert not idle, "tests named for fields they never refer to:\n  " + "\n  ".join(idle)


# --- fields whose checks do not run on this host ---------------------------------------------

README = ROOT / "suites" / "state" / "README.md"
NEVER_HEADING = "### Never checked here"


def _collected_ids(files):
    out = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                          "-p", "no:xdist", *sorted(files)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    ids = [line for line in out.stdout.splitlines() if line.startswith("suites/") and "::" in line]
    assert ids, f"collecting {sorted(files)} found nothing:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}"
    return ids


def _marks(function, module):
    out = []
    for owner in (function, module):
        marks = getattr(owner, "pytestmark", [])
        for m in marks if isinstance(marks, list) else [marks]:
            out.append(getattr(m, "mark", m))       # a module's pytestmark may be a MarkDecorator
    return out


def _runs_here(kvm, issues, module, item_id):
    """Whether a collected suite test runs as a real check on this host: no known-issue entry that
    applies here covers it (xfail or not run), its requires_cap / requires_cpu markers are met,
    and its CPU mode's feature is reported. A pytest.skip inside a test body is not seen here."""
    if any(i.matches_test(item_id) for i in issues):
        return False
    function = getattr(module, item_id.split("::")[1].split("[")[0])
    for mark in _marks(function, module):
        if mark.name == "requires_cap" and kvm.check_extension(mark.args[0]) < mark.kwargs.get("minimum", 1):
            return False
        if mark.name == "requires_cpu" and not kvm.has_feature(mark.args[0]):
            return False
    params = item_id.partition("[")[2].rstrip("]").split("-")
    for n in range(len(params), 0, -1):           # the mode is the longest leading run of id parts
        mode = MODES.get("-".join(params[:n]))
        if mode is not None:
            return not (mode.requires and not kvm.has_feature(mode.requires))
    return True


def never_checked_here(kvm, fp):
    """[(struct.field, [its tests])] for each field whose tests that refer to it all fail to run
    here, with the number of fields that have tests at all."""
    t = _table()
    roots = {s["name"] for s in t["struct"]}
    issues = [i for i in known_issues.load_all(known_issues.builtin_files()) if i.matches_host(fp)]
    checks = []                                  # (field, [tests that refer to it])
    for s in t["struct"]:
        for e in s["field"]:
            if "tests" in e:
                for p in _entry_paths(s, e, roots):
                    checks.append((f"{s['name']}.{p}", [n for n in e["tests"] if _test_refers(n, p, e.get("via", []))]))
    named = {n for _, tests in checks for n in tests}
    modules = {f: _suite_module(f) for f in {n.split("::")[0] for n in named}}
    ids = _collected_ids(modules)
    runs = {n: any(_runs_here(kvm, issues, modules[n.split("::")[0]], i)
                   for i in ids if i == n or i.startswith(n + "[")) for n in named}
    return [(f, tests) for f, tests in checks if not any(runs[n] for n in tests)], len(checks)


def _suite_module(rel):
    spec = importlib.util.spec_from_file_location(f"_coverage_run_{rel.replace('/', '_')[:-3]}", ROOT / rel)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _readme_never_list():
    text = README.read_text()
    section = text.partition(NEVER_HEADING)[2].split("\n#", 1)[0]
    return re.findall(r"`(kvm_\w+(?:\.\w+)+)`", section)     # every `struct.field` named there


def test_report_fields_never_checked_on_this_host():
    """Reports (as a warning, "fields never checked here"; never a failure) how many fields are checked
    only by tests that are skipped or known-issue xfails on this host, and whether the list under
    "Never checked here" in suites/state/README.md still matches."""
    device = os.environ.get("KVMTEST_DEVICE", "/dev/kvm")
    if not os.access(device, os.R_OK | os.W_OK):
        pytest.skip(f"no usable {device}: which checks run here cannot be told")
    from kvmtest.kvm import Kvm

    fp = fingerprint.collect(device)
    with Kvm(device) as kvm:
        fields, total = never_checked_here(kvm, fp)
    listed = _readme_never_list()
    lines = [f"{len(fields)} of {total} state fields with tests are checked only by tests skipped or xfailed on "
             f"this host ({fingerprint.build_id(fp)}), as far as markers and known-issue "
             "entries tell (a pytest.skip inside a test body is not seen):"]
    lines += [f"  {f}: {', '.join(n.split('::')[1] for n in tests) or 'no test refers to it'}" for f, tests in fields]
    missing = sorted({f for f, _ in fields} - set(listed))
    if missing:   # the README's list, measured by running the tests, may hold more (in-body skips)
        lines.append(f"suites/state/README.md '{NEVER_HEADING[4:]}' does not list {missing}; update it")
    if fields:
        # A plain UserWarning: pytest-xdist's controller cannot import a category defined here.
        warnings.warn(UserWarning("fields never checked here: " + "\n".join(lines)), stacklevel=1)
