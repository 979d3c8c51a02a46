"""suites/state/field_coverage.toml against the ABI and the suites: every field of every state
structure kvmtest reads from KVM is checked by a named suite test against a source KVM does not
control, or says why it cannot be; every KVM_GET_* ioctl kvmtest defines is accounted for; and
every test the table names exists. A field added to kvmtest/abi/structs.py, or a KVM_GET_* ioctl
added to kvmtest/abi/numbers.py, fails here until the table says what checks it."""

import ctypes
import fnmatch
import importlib.util
import tomllib
from pathlib import Path

import pytest

from kvmtest.abi import structs as S
from kvmtest.abi.numbers import IOCTLS

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
