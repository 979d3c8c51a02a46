"""Every field of the eight kvm_segment entries of KVM_GET/SET_SREGS, against what the guest
loaded or sees (api.rst 4.13/4.14; SDM Vol. 3A 3.4.2-3.4.5 segment registers and descriptors,
5.3 limit checking, 7.2.4 LTR, 3.5.1 LLDT).

Guest -> host: the guest loads a descriptor the test placed in its GDT (MOV Sreg, far JMP,
LTR, LLDT); KVM_GET_SREGS must report the selector and the descriptor's fields, decoded as
the SDM gives them (byte-granular limit, accessed or busy bit set by the load).
Host -> guest: KVM_SET_SREGS sets a field; the guest observes it (MOV r16 from Sreg, STR,
SLDT, segment-relative accesses, limit and type checks).
"""

import struct

import pytest

from kvmtest.abi.structs import SEGMENT_NAMES
from kvmtest.guest import descriptors as D
from kvmtest.guest import layout as L
from kvmtest.guest.mode_select import select
from kvmtest.x86 import (
    SEG_TYPE_CODE_RX,
    SEG_TYPE_CODE_RX_ACCESSED,
    SEG_TYPE_DATA_RO_ACCESSED,
    SEG_TYPE_DATA_RW,
    SEG_TYPE_DATA_RW_ACCESSED,
    SYS_TYPE_LDT,
    SYS_TYPE_TSS_AVAILABLE,
    SYS_TYPE_TSS_BUSY,
)

FIELDS = ("selector", "base", "limit", "type", "present", "dpl", "db", "s", "l", "g", "avl", "unusable")
SEL = 0x60                       # first GDT slot a test may use (layout.GDT_ENTRIES)
TSS_BASE_32 = 0x00125000
TSS_BASE_64 = 0x0000_0012_3456_7000   # above 4 GiB: the 16-byte descriptor's upper half counts
LDT_BASE_64 = 0x0000_0034_5678_9000


def _descriptor(seg, mode):
    """(descriptor as the test writes it, kvm_segment type after the load). Distinctive base,
    limit, AVL=1 everywhere and a nonzero DPL where the load allows one (data segments: DPL >=
    CPL; LTR and LLDT check no DPL, SDM Vol. 2A), so that a field KVM drops, keeps from before
    the load or mixes up shows. SS and CS keep DPL 0: at CPL0 their DPL must be 0 (SDM Vol. 3A 5.7, 5.8.1)."""
    if seg in ("ds", "es", "fs", "gs"):
        base = {"ds": 0x00101000, "es": 0x00102000, "fs": 0x00103000, "gs": 0x00104000}[seg]
        data = D.Descriptor(base=base, limit=0x0ABCD, type=SEG_TYPE_DATA_RW, dpl=3, avl=1, g=0)
        return data, SEG_TYPE_DATA_RW_ACCESSED
    if seg == "ss":
        return D.Descriptor(base=0x1000, limit=0x7FFFF, type=SEG_TYPE_DATA_RW, avl=1, g=1), SEG_TYPE_DATA_RW_ACCESSED
    if seg == "cs":
        long = mode == "long64"
        return D.Descriptor(type=SEG_TYPE_CODE_RX, avl=1, l=int(long), db=int(not long)), SEG_TYPE_CODE_RX_ACCESSED
    if seg == "tr":
        base = TSS_BASE_64 if mode == "long64" else TSS_BASE_32
        tss = D.Descriptor(base=base, limit=0x67, type=SYS_TYPE_TSS_AVAILABLE, s=0, dpl=2, db=0, g=0, avl=1)
        return tss, SYS_TYPE_TSS_BUSY
    base = LDT_BASE_64 if mode == "long64" else 0x00126000
    return D.Descriptor(base=base, limit=0x2F, type=SYS_TYPE_LDT, s=0, dpl=1, db=0, g=0, avl=1), SYS_TYPE_LDT


def _load(seg):
    if seg == "cs":
        return f"FARJMP {SEL:#x}, loaded\nloaded:"
    if seg == "tr":
        return f"mov ax, {SEL:#x}\nltr ax"
    if seg == "ldt":
        return f"mov ax, {SEL:#x}\nlldt ax"
    return f"mov ax, {SEL:#x}\nmov {seg}, ax"


LOAD_CASES = [(m, s) for m in ("pm32", "compat32") for s in SEGMENT_NAMES
              if not (m == "compat32" and s in ("tr", "ldt"))]
LOAD_CASES += [("long64", s) for s in ("cs", "fs", "gs", "tr", "ldt")]


@pytest.mark.parametrize("mode,seg", LOAD_CASES, ids=[f"{m}-{s}" for m, s in LOAD_CASES])
def test_segment_the_guest_loads_is_what_get_sregs_reports(guest, mode, seg):
    """After the guest loads a selector, KVM_GET_SREGS reports for that segment register the
    selector and every field of its descriptor: base (64 bits from a 16-byte system descriptor
    in IA-32e mode), byte-granular limit, type with the accessed bit (code/data) or busy bit
    (TSS) the load sets, S, DPL, P, D/B, L, G, AVL, and unusable = 0 (SDM Vol. 3A 3.4.5,
    3.4.5.1, 7.2.4 LTR; api.rst 4.13); KVM_GET_SREGS2 reports the same (api.rst KVM_GET_SREGS2).
    The accessed/busy bit also lands in the guest's GDT."""
    desc, loaded_type = _descriptor(seg, mode)
    g = guest(mode, f"{_load(seg)}\nGUEST_SYNC 1\nGUEST_DONE")
    raw = desc.encode_system64() if seg in ("tr", "ldt") and mode != "pm32" else desc.encode()
    g.set_gdt_entry(SEL, raw)
    assert g.expect_sync() == 1
    got = getattr(g.vcpu.get_sregs(), seg)
    want = desc.to_kvm_segment(SEL)
    want.type = loaded_type
    wrong = [f"{f}: expected {getattr(want, f):#x}, got {getattr(got, f):#x}" for f in FIELDS
             if getattr(want, f) != getattr(got, f)]
    assert not wrong, f"KVM_GET_SREGS {seg} after the guest loaded selector {SEL:#x} ({mode}): " + "; ".join(wrong)
    if g.kvm.check_extension("KVM_CAP_SREGS2"):
        got2 = getattr(g.vcpu.get_sregs2(), seg)
        wrong = [f"{f}: expected {getattr(want, f):#x}, got {getattr(got2, f):#x}" for f in FIELDS
                 if getattr(want, f) != getattr(got2, f)]
        assert not wrong, f"KVM_GET_SREGS2 {seg} after the guest loaded selector {SEL:#x} ({mode}): " + "; ".join(wrong)
    in_gdt = D.Descriptor.decode(g.vm.read(L.GDT + SEL, 8)).type
    assert in_gdt == loaded_type, \
        f"descriptor type in the guest's GDT after the load: {in_gdt:#x}, expected {loaded_type:#x} (accessed/busy set)"
    g.run_to_done()


HOST_SELECTORS = {"ds": 0x68, "es": 0x70, "fs": 0x78, "gs": 0x80, "ss": 0x88, "cs": 0x90, "tr": 0x98, "ldt": 0xA0}
READ_SELECTOR = {"tr": "str ax", "ldt": "sldt ax"}


@pytest.mark.modes(*select(sample="per-code-size", code_bits=32, protected=True, cpl=0) + select(code_bits=64, cpl=0))
def test_selectors_set_by_the_host_are_what_the_guest_reads(guest, mode):
    """The visible selector of each segment register written with KVM_SET_SREGS is what MOV r16,
    Sreg, STR and SLDT read in the guest (api.rst 4.14; SDM Vol. 2B MOV, STR, SLDT)."""
    body = "\n".join(f"{READ_SELECTOR.get(s, f'mov ax, {s}')}\nGUEST_SYNC eax" for s in SEGMENT_NAMES)
    g = guest(mode, f"xor eax, eax\n{body}\nGUEST_DONE")
    sregs = g.vcpu.get_sregs()
    for seg, selector in HOST_SELECTORS.items():
        getattr(sregs, seg).selector = selector
    sregs.ldt.present, sregs.ldt.unusable = 1, 0  # a loaded LDTR: SLDT of an unusable one is not defined here
    g.set_sregs(sregs)
    seen = dict(zip(SEGMENT_NAMES, (v & 0xFFFF for v in g.run_to_done()), strict=True))
    want = {s: HOST_SELECTORS[s] for s in SEGMENT_NAMES}
    assert seen == want, f"selectors the guest read: {_hex(seen)}; KVM_SET_SREGS set {_hex(want)}"


MARK = 0x10000 + 0x3000          # DATA + 0x3000: a page the bases below point into


@pytest.mark.parametrize("seg", ["ds", "es", "fs", "gs", "ss", "cs"])
def test_segment_base_set_by_the_host_is_what_guest_accesses_use(guest, seg):
    """A segment base written with KVM_SET_SREGS is added to every access through that segment
    (SDM Vol. 3A 3.4.4 in compatibility mode, 3.4.2 hidden part): a load through seg:0x20 reads
    the bytes the host placed at base + 0x20. For CS the code keeps running at the same linear
    addresses, so RIP is moved down by the new base."""
    g = guest("compat32", f"xor ebx, ebx\nmov eax, dword ptr {seg}:[ebx + 0x20]\nGUEST_SYNC eax\nGUEST_DONE")
    base = (L.CODE - 0x1000) & ~0xFFF if seg == "cs" else MARK
    g.vm.write_u32(base + 0x20, 0x5E6B45E0 + SEGMENT_NAMES.index(seg))
    sregs = g.vcpu.get_sregs()
    getattr(sregs, seg).base = base
    g.set_sregs(sregs)
    if seg == "cs":
        regs = g.vcpu.get_regs()
        regs.rip -= base
        g.vcpu.set_regs(regs)
    seen = g.run_to_done()
    assert seen == [0x5E6B45E0 + SEGMENT_NAMES.index(seg)], \
        f"load through {seg}:0x20 with {seg}.base={base:#x} (KVM_SET_SREGS) read {seen[0]:#x}, expected the marker " \
        f"{0x5E6B45E0 + SEGMENT_NAMES.index(seg):#x} at {base + 0x20:#x}"


@pytest.mark.parametrize("seg,vector", [("ds", "GP"), ("es", "GP"), ("fs", "GP"), ("gs", "GP"), ("ss", "SS")])
def test_segment_limit_set_by_the_host_is_enforced(guest, seg, vector):
    """A limit written with KVM_SET_SREGS is the one the processor checks: with limit 0xFFF a
    4-byte load at offset 0xFFC works and one at 0xFFD raises #GP(0) (#SS(0) through SS) in
    compatibility mode (SDM Vol. 3A 5.3 limit checking)."""
    g = guest("compat32", f"""
        mov ebx, 0xFFC
        mov eax, dword ptr {seg}:[ebx]
        inc ebx
        GUEST_ASSERT_RAISES {vector}(0), mov eax, dword ptr {seg}:[ebx]
        GUEST_DONE""")
    sregs = g.vcpu.get_sregs()
    getattr(sregs, seg).limit, getattr(sregs, seg).g = 0xFFF, 0
    g.set_sregs(sregs)
    g.run_to_done()


def test_read_only_data_type_set_by_the_host_refuses_writes(guest):
    """An ES type written with KVM_SET_SREGS as read-only data (type 1) is enforced: a load
    through ES works, a store raises #GP(0) (SDM Vol. 3A 3.4.5.1 Table 3-1, 5.5 type checking).
    (ES, not GS: GUEST_ASSERT_RAISES itself stores through GS, to the vCPU's exception record.)"""
    g = guest("compat32", f"""
        mov ebx, {L.DATA:#x}
        mov eax, dword ptr es:[ebx]
        GUEST_ASSERT_RAISES GP(0), mov dword ptr es:[ebx], eax
        GUEST_DONE""")
    sregs = g.vcpu.get_sregs()
    sregs.es.type = SEG_TYPE_DATA_RO_ACCESSED
    g.set_sregs(sregs)
    g.run_to_done()


def test_unusable_segment_set_by_the_host_faults_on_use(guest):
    """A segment register marked unusable (present = 0) with KVM_SET_SREGS behaves as one loaded
    with a null selector: an access through it raises #GP(0) in compatibility mode (SDM Vol. 3A
    3.4.2, 5.4.1 null segment selector checking; api.rst 4.14)."""
    g = guest("compat32", f"""
        mov ebx, {L.DATA:#x}
        mov eax, dword ptr fs:[ebx]
        GUEST_ASSERT_RAISES GP(0), mov eax, dword ptr es:[ebx]
        GUEST_DONE""")
    sregs = g.vcpu.get_sregs()
    sregs.es.present, sregs.es.unusable, sregs.es.selector = 0, 1, 0
    g.set_sregs(sregs)
    g.run_to_done()


@pytest.mark.parametrize("db", [1, 0], ids=["ss-db1", "ss-db0"])
def test_stack_size_set_by_the_host_picks_esp_or_sp(guest, db):
    """SS.B written with KVM_SET_SREGS selects the stack-pointer size in 32-bit code: with B=1
    PUSH uses ESP, with B=0 only SP, the upper half of ESP left alone, and the store goes to
    SS.base + SP (SDM Vol. 3A 3.4.5 D/B flag, "stack segment")."""
    g = guest("compat32", """
        mov esp, 0x20000
        mov eax, 0x5A5AA5A5
        push eax
        mov ebx, esp
        mov esp, 0x7000
        GUEST_SYNC ebx
        GUEST_DONE""")
    sregs = g.vcpu.get_sregs()
    sregs.ss.db = db
    g.set_sregs(sregs)
    (esp,) = g.run_to_done()
    # ESP 0x20000 minus 4: 0x1FFFC as a 32-bit pointer; as SP, 0x0000 - 4 wraps to 0xFFFC and
    # ESP[31:16] stays 0x0002.
    want_esp, where = (0x1FFFC, 0x1FFFC) if db else (0x2FFFC, 0xFFFC)
    assert esp == want_esp, f"ESP after PUSH with SS.B={db}: {esp:#x}, expected {want_esp:#x}"
    assert g.vm.read_u32(where) == 0x5A5AA5A5, f"PUSH with SS.B={db} did not store at {where:#x}"


# Copies of the GDT and IDT (one page each) at other addresses, so that a base KVM did not take
# over from the guest or from KVM_SET_SREGS cannot pass for the one the guest builder set.
GDT_COPY, IDT_COPY = L.DATA + 0x8000, L.DATA + 0x9000


def _copy_descriptor_tables(g):
    g.vm.write(GDT_COPY, g.vm.read(L.GDT, 0x1000))
    g.vm.write(IDT_COPY, g.vm.read(L.IDT, 0x1000))


def test_descriptor_tables_set_by_the_host_are_what_sgdt_and_sidt_store(guest):
    """GDTR and IDTR written with KVM_SET_SREGS (base and limit) are what SGDT and SIDT store
    (SDM Vol. 2B SGDT, SIDT: 2-byte limit then 8-byte base in 64-bit mode; api.rst 4.14): both
    moved to copies of the tables, with limits that still cover every selector and vector used."""
    g = guest("long64", f"mov rbx, {L.DATA:#x}\nsgdt [rbx]\nsidt [rbx + 0x10]\nGUEST_DONE")
    _copy_descriptor_tables(g)
    sregs = g.vcpu.get_sregs()
    sregs.gdt.base, sregs.gdt.limit, sregs.idt.base, sregs.idt.limit = GDT_COPY, 0x7FF, IDT_COPY, 0x7FF
    g.set_sregs(sregs)
    g.run_to_done()
    gdt, idt = struct.unpack("<HQ", g.vm.read(L.DATA, 10)), struct.unpack("<HQ", g.vm.read(L.DATA + 0x10, 10))
    assert gdt == (0x7FF, GDT_COPY) and idt == (0x7FF, IDT_COPY), \
        f"SGDT stored limit/base {gdt[0]:#x}/{gdt[1]:#x}, SIDT {idt[0]:#x}/{idt[1]:#x}; KVM_SET_SREGS set " \
        f"{0x7FF:#x}/{GDT_COPY:#x} and {0x7FF:#x}/{IDT_COPY:#x}"


def test_descriptor_tables_the_guest_loads_are_what_get_sregs_reports(guest):
    """LGDT and LIDT executed by the guest load GDTR and IDTR, here moved to copies of the
    tables; KVM_GET_SREGS and KVM_GET_SREGS2 report the new base and limit (SDM Vol. 2A
    LGDT/LIDT; api.rst 4.13, KVM_GET_SREGS2)."""
    g = guest("long64", f"""
        mov rbx, {L.DATA:#x}
        mov word ptr [rbx], 0x6FF
        mov qword ptr [rbx + 2], {GDT_COPY:#x}
        mov word ptr [rbx + 0x10], 0x5FF
        mov qword ptr [rbx + 0x12], {IDT_COPY:#x}
        lgdt [rbx]
        lidt [rbx + 0x10]
        GUEST_SYNC 1
        GUEST_DONE""")
    _copy_descriptor_tables(g)
    assert g.expect_sync() == 1
    s = g.vcpu.get_sregs()
    views = [("KVM_GET_SREGS", s)]
    if g.kvm.check_extension("KVM_CAP_SREGS2"):
        views.append(("KVM_GET_SREGS2", g.vcpu.get_sregs2()))
    for name, s in views:
        assert (s.gdt.limit, s.gdt.base, s.idt.limit, s.idt.base) == (0x6FF, GDT_COPY, 0x5FF, IDT_COPY), \
            f"{name} after LGDT/LIDT: gdt {s.gdt.limit:#x}/{s.gdt.base:#x} idt {s.idt.limit:#x}/{s.idt.base:#x}; " \
            f"the guest loaded {0x6FF:#x}/{GDT_COPY:#x} and {0x5FF:#x}/{IDT_COPY:#x}"
    g.run_to_done()


def _hex(d):
    return "{" + ", ".join(f"{k}: {v:#x}" for k, v in d.items()) + "}"
