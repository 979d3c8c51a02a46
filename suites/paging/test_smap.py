"""SMAP and RFLAGS.AC (SDM Vol. 3A 4.6.1; kvm-unit-tests smap).

With CR4.SMAP = 1 a supervisor-mode data access to a user-mode page faults unless it is an
explicit access made with RFLAGS.AC = 1: STAC and CLAC set and clear AC at CPL0 and raise #UD at
CPL3 (SDM Vol. 2B STAC, CLAC). Implicit supervisor-mode accesses (descriptor-table and TSS reads,
at any CPL) ignore AC. The SMAP cells of the permission matrix (test_permissions.py) cover
AC = 0 for every page size; these cover AC itself.
"""

import pytest

from kvmtest.guest import descriptors as D
from kvmtest.guest import layout as L
from kvmtest.guest.fault_probe import expect_fault_at_probe, fault_probe_source, install_fault_probe, probe_outcome
from kvmtest.guest.mode_select import ANY, select
from kvmtest.guest.modes import gdt_entries, get_mode
from kvmtest.guest.paging import KiB4
from kvmtest.paging_model import Context, Walk, describe_pfec, page_fault
from kvmtest.x86 import CR4_SMAP, PF_VECTOR, PFEC_P, PTE_P, PTE_RW, PTE_US, RFLAGS_AC

pytestmark = pytest.mark.requires_cpu("smap")

PAGED_CPL0 = select(sample="per-paging-form", cpl=0, feature=ANY, order="widest")
USER_PAGE = L.DATA + 0x2000         # a user-mode page (U/S = 1 on every level) the CPL0 guest accesses
PATTERN = 0x5A17C0DE
GDT2 = L.DATA + 0x4000              # a two-page GDT: the guest's own descriptors, then a user-mode page
USER_SELECTOR = 0x1000              # GDT index 512: the first descriptor of GDT2's second page
WRITES = (0x11111111, 0x22222222, 0x33333333)  # the writes with AC = 0, AC = 1, AC = 0 again


def _regs(mode):
    """(pointer register, scratch register, stack pointer, PUSHF/POPF suffix) at the mode's width."""
    return ("rbx", "rcx", "rsp", "q") if get_mode(mode).code_bits == 64 else ("ebx", "ecx", "esp", "d")


def _check_cr2(mode, address):
    """Guest lines: CR2 as the last #PF's handler recorded it must be `address`."""
    _, c, _, _ = _regs(mode)
    width = "qword" if c == "rcx" else "dword"
    return f"mov ecx, {L.EXC_CR2:#x}\nmov {c}, {width} ptr gs:[{c}]\nGUEST_ASSERT_EQ {c}, {address:#x}"


def _explicit_fault(access, ac):
    """The #PF error code of a CPL0 explicit `access` to a present, writable user-mode page with
    CR4.SMAP = 1 and RFLAGS.AC = `ac` (kvmtest.paging_model, SDM Vol. 3A 4.6.1 and 4.7), or None."""
    walk = Walk(present=(True,), writable=(True,), user=(True,), nx=(False,), reserved=(False,))
    return page_fault(walk, Context(access, 0, smap=True, ac=ac))


def _access_line(mode, access, n, ac):
    b, _, _, _ = _regs(mode)
    insn = f"mov eax, dword ptr [{b}]" if access == "read" else f"mov dword ptr [{b}], {WRITES[n]:#x}"
    code = _explicit_fault(access, ac)
    if code is None:
        return insn
    return f"GUEST_ASSERT_RAISES PF({code:#x}), explicit{n}: {insn}\n{_check_cr2(mode, USER_PAGE)}"


def _with_smap(g):
    sregs = g.vcpu.get_sregs()
    sregs.cr4 |= CR4_SMAP
    g.set_sregs(sregs)


@pytest.mark.modes(*PAGED_CPL0)
@pytest.mark.parametrize("access", ["read", "write"])
def test_ac_lifts_smap_for_explicit_supervisor_accesses(guest, mode, access):
    """With CR4.SMAP = 1 a CPL0 read or write of a user-mode page raises #PF (error code P, with W
    for the write, U/S clear: a supervisor-mode access; CR2 the address) after CLAC, completes after
    STAC and faults again after CLAC (SDM Vol. 3A 4.6.1: "If EFLAGS.AC = 1 and the access is explicit,
    data may be read from any user-mode address"; 4.7; Vol. 2B STAC, CLAC). A faulting read loads
    nothing and a faulting write stores nothing. Needs CPUID.7.0:EBX[20] (SMAP)."""
    b, _, _, _ = _regs(mode)
    lines = [f"mov {b}, {USER_PAGE:#x}", "xor eax, eax", "clac", _access_line(mode, access, 0, False)]
    if access == "read":
        lines.append("GUEST_ASSERT_EQ eax, 0")  # the faulting read loaded nothing
    lines += ["stac", _access_line(mode, access, 1, True)]
    if access == "read":
        lines += [f"GUEST_ASSERT_EQ eax, {PATTERN:#x}", "xor eax, eax"]
    lines += ["clac", _access_line(mode, access, 2, False)]
    if access == "read":
        lines.append("GUEST_ASSERT_EQ eax, 0")
    g = guest(mode, "\n".join(lines + ["GUEST_DONE"]))
    g.page_tables.map(USER_PAGE, USER_PAGE, KiB4, PTE_P | PTE_RW | PTE_US)
    g.vm.write(USER_PAGE, PATTERN.to_bytes(4, "little"))
    _with_smap(g)
    g.run_to_done()
    if access == "write":
        stored = int.from_bytes(g.vm.read(USER_PAGE, 4), "little")
        assert stored == WRITES[1], (f"{mode}: the user page holds {stored:#x} after the writes; expected "
                                     f"{WRITES[1]:#x}, the one made after STAC (those with AC = 0 must fault, "
                                     f"#PF({describe_pfec(_explicit_fault('write', False))}), and store nothing)")


@pytest.mark.modes(sample="per-code-size", cpl=3)
def test_stac_and_clac_at_cpl3_raise_ud(guest, mode):
    """At CPL3, STAC and CLAC raise #UD and leave RFLAGS.AC as it was: STAC with AC = 0 and CLAC
    with AC = 1 (set by POPF, which may change AC at any CPL) (SDM Vol. 2B STAC, CLAC: "#UD ... If
    the CPL > 0"). Needs CPUID.7.0:EBX[20] (SMAP), without which #UD would come for another reason."""
    _, c, sp, sfx = _regs(mode)
    ac_of_rflags = f"pushf{sfx}\npop {c}\nand ecx, {RFLAGS_AC:#x}"
    g = guest(mode, f"""
        GUEST_ASSERT_RAISES UD, stac
        {ac_of_rflags}
        GUEST_ASSERT_EQ ecx, 0
        pushf{sfx}
        or dword ptr [{sp}], {RFLAGS_AC:#x}
        popf{sfx}
        GUEST_ASSERT_RAISES UD, clac
        {ac_of_rflags}
        GUEST_ASSERT_EQ ecx, {RFLAGS_AC:#x}
        GUEST_DONE""")
    g.run_to_done()


def _gdt_with_a_user_page(g, mode, smap):
    """GDTR at GDT2: its first page a copy of the guest's GDT (supervisor-mode, so that event
    delivery's own descriptor reads succeed), its second a user-mode page holding one flat data
    descriptor at USER_SELECTOR. At CPL3 every page is user-mode, so the pages event delivery reads
    implicitly (GDT2's first page, IDT, TSS) and the kernel stack become supervisor-mode ones."""
    m = get_mode(mode)
    for selector, raw in gdt_entries().items():
        g.vm.write(GDT2 + selector, raw)
    g.vm.write(GDT2 + USER_SELECTOR, D.data(dpl=m.cpl).encode())
    pt = g.page_tables
    pt.map(GDT2 + 0x1000, GDT2 + 0x1000, KiB4, PTE_P | PTE_RW | PTE_US)
    if m.user:
        for page in (GDT2, L.IDT, L.TSS, L.KERNEL_STACK_TOP - 0x1000):
            pt.map(page, page, KiB4, PTE_P | PTE_RW)
    sregs = g.vcpu.get_sregs()
    sregs.gdt.base, sregs.gdt.limit = GDT2, 0x1FFF
    if smap:
        sregs.cr4 |= CR4_SMAP
    g.set_sregs(sregs)


IMPLICIT_CASES = ["ac0", "ac1", "smap0"]   # RFLAGS.AC 0 or 1 with CR4.SMAP = 1; the control: SMAP clear, AC = 1


@pytest.mark.modes(sample="per-paging-form", feature=ANY, order="widest")
@pytest.mark.parametrize("case", IMPLICIT_CASES)
def test_implicit_supervisor_access_to_a_user_page_faults_whatever_ac(guest, mode, case):
    """With CR4.SMAP = 1, loading ES with a selector whose descriptor lies in a user-mode page of
    the GDT raises #PF with error code P (U/S clear: a descriptor-table read is an implicit
    supervisor-mode access at any CPL; W clear: the descriptor is already accessed) and CR2 the
    descriptor's address, with RFLAGS.AC = 1 as with AC = 0 (SDM Vol. 3A 4.6.1: "If EFLAGS.AC = 0
    or the access is implicit, data may not be read from any user-mode address"; 4.7). The guest
    sets AC with STAC at CPL0 and with POPF at CPL3. The control (smap0): with CR4.SMAP = 0 the
    same load completes, so the fault is SMAP's. The #PF handler is a fault probe that reads only
    its supervisor-mode stack, whatever AC is. Needs CPUID.7.0:EBX[20] (SMAP)."""
    m = get_mode(mode)
    _, _, sp, sfx = _regs(mode)
    selector = USER_SELECTOR | m.cpl
    descriptor = GDT2 + USER_SELECTOR
    if case == "ac0":
        set_ac = "clac" if m.cpl == 0 else ""   # AC starts clear (kvmtest.guest.modes.initial_rflags)
    else:
        set_ac = "stac" if m.cpl == 0 else f"pushf{sfx}\nor dword ptr [{sp}], {RFLAGS_AC:#x}\npopf{sfx}"
    g = guest(mode, fault_probe_source(mode, f"mov eax, {selector:#x}\n{set_ac}", "mov es, ax", "GUEST_SYNC es"))
    install_fault_probe(g, PF_VECTOR)
    _gdt_with_a_user_page(g, mode, smap=case != "smap0")
    what = f"{mode} {case}: MOV ES, {selector:#x} (descriptor at {descriptor:#x}, a user-mode page)"
    if case == "smap0":
        outcome = probe_outcome(g, PF_VECTOR)
        assert not outcome.faulted and outcome.results == (selector,), \
            f"{what} with CR4.SMAP = 0: expected the load to complete and ES = {selector:#x}, got {outcome}"
        return
    outcome = expect_fault_at_probe(g, PF_VECTOR, what)
    assert outcome.error_code == PFEC_P, \
        f"{what}: #PF error code {outcome.error_code:#x} ({describe_pfec(outcome.error_code or 0)}), expected " \
        f"{PFEC_P:#x} (P: an implicit supervisor-mode read)"
    cr2 = g.vcpu.get_sregs().cr2
    assert cr2 == descriptor, f"{what}: #PF with CR2 {cr2:#x}, expected the descriptor's address {descriptor:#x}"
