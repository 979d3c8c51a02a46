"""The page-permission matrix (SDM Vol. 3A 4.6 access rights, 4.7 #PF error code, 4.8
accessed/dirty flags), in the model of kvm-unit-tests' access test: present, writable, user,
NX and reserved bits at the leaf or at the entry above it, times read/write/fetch, CPL0 and
CPL3, CR0.WP, CR4.SMEP and CR4.SMAP, for every page size of every paging mode. The expected
outcome comes from kvmtest.paging_model, the SDM's rules as code.
"""

import itertools
from dataclasses import dataclass

import pytest

from kvmtest.cpuid import max_phys_addr
from kvmtest.fingerprint import kvm_modules
from kvmtest.guest import get_mode
from kvmtest.guest.mode_select import select
from kvmtest.guest.paging import GiB1, KiB4, MiB2, MiB4, describe_flags
from kvmtest.paging_model import Context, Walk, describe_pfec, page_fault
from kvmtest.x86 import CR0_WP, CR4_SMAP, CR4_SMEP, PTE_A, PTE_D, PTE_P, PTE_RW, PTE_US, PTE_XD

VA = 0x80010000   # the address every case accesses (below 4 GiB for the 32-bit paging forms)
# With 4-level paging VA lies in the second PML4 slot, so no entry on its walk also maps the guest's
# own code, stack or tables: the upper entry of a 1 GiB page is a PML4E, and PML4E 0 maps them all.
VA_4LEVEL = 0x8000010000
PA = 0x10000      # layout.DATA: where VA lands whatever the page size
SIZES = {KiB4: "4k", MiB2: "2m", MiB4: "4m", GiB1: "1g"}
FLAG_SETS = [(), ("ro",), ("sup",), ("nx",), ("ro", "sup"), ("ro", "nx"), ("sup", "nx"), ("ro", "sup", "nx"),
             ("np",), ("rsvd",)]
ACCESSES = [("read", True), ("write", True), ("write", False), ("fetch", True)]  # (access, CR0.WP)
SOURCE = {
    "read": "mov eax, dword ptr [{b}]",
    "write": "mov dword ptr [{b}], 0x5a5a5a5a",
    "fetch": "call {b}",
}


@dataclass(frozen=True)
class Case:
    mode: str
    size: int
    level: str      # "leaf" or "upper" (the entry that points to the leaf's table)
    flags: tuple
    access: str
    wp: bool
    feature: str    # "-", "smep" or "smap"

    @property
    def id(self):
        return (f"{self.mode}-{SIZES[self.size]}-{self.level}-{'+'.join(self.flags) or 'rw'}-{self.access}"
                f"-wp{int(self.wp)}-{self.feature}")


def _cases():
    for mode in select(sample="per-paging-form", order="widest"):
        m = get_mode(mode)
        for size, level, flags, (access, wp), feature in itertools.product(
                m.page_sizes, ("leaf", "upper"), FLAG_SETS, ACCESSES, ("-", "smep", "smap")):
            if m.paging == "32" and ("nx" in flags or "rsvd" in flags):
                continue  # 32-bit paging has no NX bit and no reserved bits in these entries
            if m.user and (not wp or feature != "-"):
                continue  # CR0.WP, SMEP and SMAP only change supervisor accesses
            if feature == "smep" and access != "fetch" or feature == "smap" and access == "fetch":
                continue  # SMEP is about fetches, SMAP about data accesses
            if _is_pdpte(m.paging, size, level) and any(f in flags for f in ("ro", "sup", "nx")):
                continue  # PAE PDPTEs have no R/W, U/S or NX bits (SDM Vol. 3A Table 4-8)
            if _is_pdpte(m.paging, size, level) and "rsvd" in flags:
                continue  # a reserved bit in a PAE PDPTE faults the CR3 load (#GP, SDM Vol. 3A 4.4.1), not an access
            if size == MiB4 and level == "upper":
                continue  # a 4 MiB page is mapped by a PDE, the root table's entry: nothing is above it
            yield Case(mode, size, level, flags, access, wp, feature)


def _is_pdpte(paging, size, level):
    """Whether the case's entry is a PAE PDPTE (upper entry of a 2 MiB page)."""
    return paging == "pae" and size == MiB2 and level == "upper"


CASES = list(_cases())


def _entry_flags(flags, rsvd_bit, pdpte=False):
    value = PTE_P if pdpte else PTE_P | PTE_RW | PTE_US
    if "np" in flags:
        value &= ~PTE_P
    if "ro" in flags:
        value &= ~PTE_RW
    if "sup" in flags:
        value &= ~PTE_US
    if "nx" in flags:
        value |= PTE_XD
    if "rsvd" in flags:
        value |= 1 << rsvd_bit
    return value


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_access(guest, kvm, case):
    """One access through a page whose leaf or upper entry carries the case's flags faults
    exactly when SDM Vol. 3A 4.6 says, with the 4.7 error code and CR2; an access that succeeds
    sets A at every level walked and D on the leaf only for a write (4.8). KVM_TRANSLATE agrees
    with the tables first: valid with the right address unless an entry is not present or has
    a reserved bit set (api.rst 4.15)."""
    _check(guest, kvm, case)


# KVM's forced-emulation prefix: ud2 then "kvm". With the kvm module parameter
# force_emulation_prefix set, KVM skips it and runs the next instruction in its emulator.
FEP = ".byte 0x0f, 0x0b, 0x6b, 0x76, 0x6d; "
FEP_CASES = [c for c in CASES if c.access != "fetch"]  # the emulated CALL's target is fetched natively


def _forced_emulation_enabled():
    value = kvm_modules().get("kvm", {}).get("force_emulation_prefix", "0")
    return value.lstrip("-").isdigit() and int(value) & 1


# Without the parameter the ud2 is a real #UD: one skipped entry says so, instead of ~900.
FEP_PARAMS = [pytest.param(c, id=c.id) for c in FEP_CASES] if _forced_emulation_enabled() else \
    [pytest.param(None, id="all", marks=pytest.mark.skip(
        reason="the forced-emulation prefix needs the kvm module parameter force_emulation_prefix=1"))]


@pytest.mark.parametrize("case", FEP_PARAMS)
def test_access_through_the_emulator(guest, kvm, case):
    """The same reads and writes, each forced through KVM's instruction emulator with the
    forced-emulation prefix: the emulator's own page walk must give the outcome, error code,
    CR2 and A/D updates SDM Vol. 3A 4.6-4.8 give (kvm-unit-tests access_fep). Needs the kvm
    module parameter force_emulation_prefix."""
    _check(guest, kvm, case, prefix=FEP)


def _check(guest, kvm, case, prefix=""):
    mode = get_mode(case.mode)
    if case.size == GiB1 and not kvm.has_feature("pdpe1gb"):
        pytest.skip("1 GiB pages need CPUID.80000001H:EDX[26] (pdpe1gb), which KVM does not report")
    if case.feature != "-" and not kvm.has_feature(case.feature):
        pytest.skip(f"CR4.{case.feature.upper()} needs the {case.feature} CPUID bit, which KVM does not report")
    maxphy = max_phys_addr(kvm.cached_supported_cpuid())
    if "rsvd" in case.flags and maxphy >= 52:
        pytest.skip("MAXPHYADDR is 52: no reserved address bits to set")
    b = "rbx" if mode.code_bits == 64 else "ebx"
    va = VA_4LEVEL if mode.paging == "4level" else VA
    leaf_fault = _expected(case, mode)
    access = prefix + SOURCE[case.access].format(b=b)
    body = f"GUEST_ASSERT_RAISES PF({leaf_fault:#x}), fault: {access}" if leaf_fault is not None else access
    g = guest(case.mode, f"mov {b}, {va:#x}\n{body}\nGUEST_DONE", page_size=MiB2 if mode.paging != "32" else MiB4)
    g.vm.write(PA, b"\xc3")  # RET, for fetches
    pt = g.page_tables
    leaf = pt.leaf_level(case.size)
    target = PA & ~(case.size - 1)
    pt.map(va & ~(case.size - 1), target, case.size, PTE_P | PTE_RW | PTE_US)
    level = leaf if case.level == "leaf" else leaf - 1
    entry = pt.read_entry(va, level)
    pdpte = _is_pdpte(mode.paging, case.size, case.level)
    cleared = entry & ~(PTE_P | PTE_RW | PTE_US | PTE_XD)
    pt.write_entry(va, level, cleared | _entry_flags(case.flags, maxphy, pdpte))
    # Load CR3 again, as an OS does after changing a PDPT: with PAE paging the walk uses the PDPTE
    # registers loaded then, not memory (SDM Vol. 3A 4.4.1).
    g.set_sregs(g.vcpu.get_sregs())
    tr = g.vcpu.translate(va)
    reachable = "np" not in case.flags and "rsvd" not in case.flags
    assert (tr.valid, tr.physical_address if tr.valid else None) == (int(reachable), PA if reachable else None), \
        f"KVM_TRANSLATE({va:#x}) = {tr}; " \
        f"the guest's tables {'map it to ' + hex(PA) if reachable else 'do not map it'} " \
        "(api.rst 4.15)"
    sregs = g.vcpu.get_sregs()
    sregs.cr0 = sregs.cr0 | CR0_WP if case.wp else sregs.cr0 & ~CR0_WP
    sregs.cr4 |= {"-": 0, "smep": CR4_SMEP, "smap": CR4_SMAP}[case.feature]
    g.set_sregs(sregs)
    g.run_to_done()
    walk = pt.walk(va)
    if leaf_fault is not None:
        cr2 = g.exception_record()["cr2"]
        assert cr2 == va, f"#PF({describe_pfec(leaf_fault)}): CR2 {cr2:#x}, expected {va:#x}"
        return
    problems = [f"{name} A clear ({describe_flags(value)})" for name, _, value in walk if not value & PTE_A]
    leaf_value = walk[-1][2]
    if bool(leaf_value & PTE_D) != (case.access == "write"):
        problems.append(f"leaf D={int(bool(leaf_value & PTE_D))} after a {case.access} ({describe_flags(leaf_value)})")
    assert not problems, "after a successful access: " + "; ".join(problems)


def _expected(case, mode):
    leaf = {KiB4: mode.paging and {"32": 1, "pae": 2, "4level": 3, "5level": 4}[mode.paging],
            MiB2: {"pae": 1, "4level": 2, "5level": 3}.get(mode.paging),
            MiB4: 0, GiB1: {"4level": 1, "5level": 2}.get(mode.paging)}[case.size]
    levels = leaf + 1
    at = leaf if case.level == "leaf" else leaf - 1
    flags = _entry_flags(case.flags, 51)

    def vec(bit, default, set_means):
        v = [default] * levels
        v[at] = bool(flags & bit) if set_means else not (flags & bit)
        return tuple(v)

    walk = Walk(vec(PTE_P, True, True), vec(PTE_RW, True, True), vec(PTE_US, True, True), vec(PTE_XD, False, True),
                tuple(("rsvd" in case.flags) and i == at for i in range(levels)))
    ctx = Context(case.access, mode.cpl, wp=case.wp, nxe=mode.paging != "32", smep=case.feature == "smep",
                  smap=case.feature == "smap", paging32=mode.paging == "32")
    return page_fault(walk, ctx)
