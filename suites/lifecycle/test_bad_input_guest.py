"""Guest's table and vCPU helpers refuse what does not fit where it would be written, naming it.

set_idt_gate(-1) wrote a gate at IDT - 16 (in the GDT page) and set_idt_gate(256) over the TSS;
a handler of -1 became 0xffff...; a GDT selector that is no integer was a TypeError; symbols
mapping a name to a string were accepted; migrate() after close() was a ValueError. The IDT and
IVT have 256 entries, gate fields have fixed widths (SDM Vol. 3A 6.11, 6.14.1, 20.1.4 for the
IVT), and selectors index 8-byte descriptors (SDM Vol. 3A 3.4.2).
"""

import pytest

from kvmtest.errors import BadArgumentError, ClosedError
from kvmtest.guest import Guest
from kvmtest.guest import layout as L

SOURCE = "handler:\nGUEST_DONE"


def _tables(g) -> bytes:
    return g.vm.read(0, L.TSS + L.TSS_SIZE)  # IVT, GDT, IDT and TSS


@pytest.mark.parametrize("mode, vector, target, problem", [
    ("long64", -1, "handler", r"IDT vector = -1: outside 0 to 255"),
    ("long64", 256, "handler", r"IDT vector = 256: outside 0 to 255"),
    ("long64", None, "handler", r"IDT vector = None: not an integer"),
    ("long64", 3, -1, r"IDT vector 3 handler \(64-bit offset in long64\) = -0x1: outside 0x0 to 0xffffffffffffffff"),
    ("pm32", 3, 1 << 32, r"IDT vector 3 handler \(32-bit offset in pm32\) = 0x100000000"),
    ("pm16", 3, 0x10000, r"IDT vector 3 handler \(16-bit offset in pm16\) = 0x10000"),
    ("real", 3, 0x10000, r"IVT vector 3 handler \(16-bit offset in real\) = 0x10000"),
    ("real", 256, "handler", r"IVT vector = 256"),
    ("long64", 3, None, r"None is neither an address nor a label"),
])
def test_idt_gate_outside_the_table_or_the_offset(guest, mode, vector, target, problem):
    """The IDT/IVT has 256 vectors and a gate's offset is 64, 32 or 16 bits by mode (SDM Vol. 3A
    6.11, 6.14.1, 20.1.4): a vector or handler outside them is refused by name, tables unchanged."""
    g = guest(mode, SOURCE)
    before = _tables(g)
    with pytest.raises(BadArgumentError, match=problem):
        g.set_idt_gate(vector, target)
    assert _tables(g) == before, "a refused set_idt_gate changed the IVT, GDT, IDT or TSS"


@pytest.mark.parametrize("mode, kwargs, problem", [
    ("long64", {"dpl": 4}, r"IDT vector 3 gate DPL = 4: outside 0 to 3"),
    ("long64", {"gate_type": 16}, r"IDT vector 3 gate type = 16: outside 0 to 15"),
    ("long64", {"ist": 8}, r"IDT vector 3 gate IST \(only a 64-bit IDT has one\) = 8: outside 0 to 7"),
    ("pm32", {"ist": 1}, r"IDT vector 3 gate IST \(only a 64-bit IDT has one\) = 1: outside 0 to 0"),
    ("long64", {"selector": 1 << 16}, r"IDT vector 3 gate selector = 0x10000: outside the 16-bit field"),
])
def test_idt_gate_field_outside_its_width(guest, mode, kwargs, problem):
    """Gate DPL is 2 bits, type 4, IST 3 and only in a 64-bit IDT, selector 16 (SDM Vol. 3A 6.11,
    6.14.1): a value outside its field is refused by name and the tables stay unchanged."""
    g = guest(mode, SOURCE)
    before = _tables(g)
    with pytest.raises(BadArgumentError, match=problem):
        g.set_idt_gate(3, "handler", **kwargs)
    assert _tables(g) == before


@pytest.mark.parametrize("selector, raw, problem", [
    ("x", bytes(8), r"GDT selector = 'x': not an integer"),
    (0x61, bytes(8), r"GDT selector 0x61: tests may use 0x60-0xff8, 8-aligned"),
    (0x8, bytes(8), r"GDT selector 0x8: tests may use 0x60-0xff8"),
    (0xFF8, bytes(16), r"GDT selector 0xff8: tests may use 0x60-0xff8, 8-aligned, within the GDT page"),
    (0x60, bytes(3), r"GDT descriptor at selector 0x60: 3 bytes; a descriptor has 8"),
    (0x60, "abcdefgh", r"GDT descriptor at selector 0x60: expected bytes, got 'abcdefgh'"),
])
def test_gdt_entry_outside_the_gdt_or_not_a_descriptor(guest, selector, raw, problem):
    """A selector indexes 8-byte descriptors (SDM Vol. 3A 3.4.2): one that is no integer, unaligned,
    in kvmtest's own entries or past the GDT page, or a descriptor not 8/16 bytes, is refused."""
    g = guest("long64", SOURCE)
    before = _tables(g)
    with pytest.raises(BadArgumentError, match=problem):
        g.set_gdt_entry(selector, raw)
    assert _tables(g) == before


@pytest.mark.parametrize("mode, kwargs, problem", [
    ("long64", {"entry": -1}, r"add_vcpu entry \(long64\) = -0x1: outside 0x0 to 0xffffffffffffffff"),
    ("pm32", {"entry": 1 << 32}, r"add_vcpu entry \(pm32\) = 0x100000000: outside 0x0 to 0xffffffff"),
    ("long64", {"entry": "handler", "stack": -8}, r"add_vcpu stack \(long64\) = -0x8"),
    ("long64", {"entry": 1.5}, r"1.5 is neither an address nor a label"),
])
def test_add_vcpu_entry_or_stack_outside_the_mode(guest, mode, kwargs, problem):
    """RIP and RSP hold an offset of the mode's code size; a wrapped -1 started the vCPU elsewhere."""
    g = guest(mode, SOURCE)
    with pytest.raises(BadArgumentError, match=problem):
        g.add_vcpu(**kwargs)
    assert len(g.vm.vcpus) == 1, "a refused add_vcpu created a vCPU"


def test_symbols_that_are_not_names_to_integers(kvm):
    """Guest symbols map assembler names to integers: a string value (once accepted) is one
    BadArgumentError naming the guest and the symbol, raised before any VM exists."""
    with pytest.raises(BadArgumentError, match=r"Guest 'guest' symbol x = 'y': not an integer"):
        Guest(kvm, "long64", "GUEST_DONE", symbols={"x": "y"})


def test_max_exits_that_is_no_count(kvm):
    """max_exits bounds the exits one run() may pass; 0 would fail every run, so it is one
    BadArgumentError naming the value and its range at construction."""
    with pytest.raises(BadArgumentError, match=r"Guest 'guest' max_exits = 0: outside 1 to"):
        Guest(kvm, "long64", "GUEST_DONE", max_exits=0)


def test_migrate_after_close_is_closed_error(kvm):
    """migrate() of a closed guest is ClosedError naming the guest and its closed VM (a VM is its
    fd, api.rst 4.2), not the ValueError it used to be."""
    g = Guest(kvm, "long64", "GUEST_DONE")
    g.close()
    with pytest.raises(ClosedError, match=r"guest: cannot migrate a closed guest \(its VM vm\d+ is closed\)"):
        g.migrate()


@pytest.mark.parametrize("args, kwargs, problem", [
    ((None, "long64", "GUEST_DONE"), {}, r"Guest 'guest': expected a kvmtest.kvm.Kvm, got None"),
    (("KVM", "long64", None), {}, r"Guest 'guest' source: expected assembly text \(a str\), got None"),
    (("KVM", "long64", b"GUEST_DONE"), {}, r"Guest 'guest' source: expected assembly text"),
    (("KVM", "long64", "GUEST_DONE"), {"page_size": "4k"}, r"Guest 'guest' page_size = '4k': not an integer"),
    (("KVM", "long64", "GUEST_DONE"), {"identity_size": -1}, r"Guest 'guest' identity_size = -0x1"),
    (("KVM", "long64", "GUEST_DONE"), {"nxe": 1}, r"Guest 'guest' nxe: expected True, False or None, got 1"),
], ids=["kvm-none", "source-none", "source-bytes", "page-size-str", "identity-size-neg", "nxe-not-bool"])
def test_guest_construction_with_a_wrong_value(kvm, args, kwargs, problem):
    """Refused before a VM exists; a negative identity_size used to build a guest with less mapped."""
    args = tuple(kvm if a == "KVM" else a for a in args)
    with pytest.raises(BadArgumentError, match=problem):
        Guest(*args, **kwargs)


def test_run_with_a_vcpu_of_another_guest(guest):
    """run()/run_to_done() with a vCPU that is not this guest's is one BadArgumentError naming it,
    and the other guest's vCPU is not entered (its GUEST_SYNC 1 is still the next event)."""
    g, other = guest("long64", "GUEST_DONE"), guest("long64", "GUEST_SYNC 1\nGUEST_DONE")
    with pytest.raises(BadArgumentError,
                       match=r"guest: vcpu <Vcpu vm\d+/vcpu0 fd=\d+> is not one of this guest's vCPUs"):
        g.run(vcpu=other.vcpu)
    with pytest.raises(BadArgumentError, match=r"vcpu 'x' is not one of this guest's vCPUs"):
        g.run_to_done(vcpu="x")
    assert other.expect_sync() == 1, "the refused run entered the other guest's vCPU"
