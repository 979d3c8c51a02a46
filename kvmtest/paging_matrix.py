"""The page-permission matrix of suites/paging, in the model of kvm-unit-tests' access test:
one access through a page whose leaf entry, or the entry above it, carries a set of flags;
what the access must do comes from kvmtest.paging_model (SDM Vol. 3A 4.6-4.8 as code).

    case = Case("long64", KiB4, "leaf", ("ro",), "write", True, "-")
    skip = requirement(kvm, case)       # None, or why this host cannot run it
    run_case(guest, kvm, case)          # builds, runs and checks; GuestFailure on a mismatch

A case may also clear EFER.NXE, preset the accessed and dirty flags, repeat the access once the
first one filled the TLB, run with a smaller MAXPHYADDR in the guest's CPUID, set another
reserved bit, or give the leaf a protection key that PKRU restricts.
"""

import itertools
from dataclasses import dataclass

from . import forced_emulation
from .cpuid import FEATURES, find_entry, max_phys_addr
from .guest import get_mode
from .guest.paging import FORMATS, GiB1, KiB4, MiB2, MiB4, describe_flags
from .paging_model import Context, Walk, describe_pfec, page_fault
from .x86 import CR0_WP, CR4_PKE, CR4_SMAP, CR4_SMEP, PTE_A, PTE_D, PTE_P, PTE_PKEY_SHIFT, PTE_RW, PTE_US, PTE_XD

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
PKEY = 1                                           # the leaf's protection key; everything else has key 0
PKRU_BITS = {"ad": 1 << (2 * PKEY), "wd": 2 << (2 * PKEY)}   # PKRU.ADi = bit 2i, WDi = bit 2i+1 (SDM 4.6.2)
WRPKRU = ".byte 0x0f, 0x01, 0xef"                  # WRPKRU (Keystone lacks it): PKRU = EAX, ECX = EDX = 0


@dataclass(frozen=True)
class Case:
    """One access of the matrix and the state it is made in."""
    mode: str
    size: int
    level: str      # "leaf" or "upper" (the entry that points to the leaf's table)
    flags: tuple    # "ro", "sup", "nx", "np", "rsvd" on that entry
    access: str
    wp: bool
    feature: str    # "-", "smep" or "smap"
    nxe: bool = True                # IA32_EFER.NXE (where paging has an XD bit)
    preset_ad: bool = False         # A set on every entry of the walk and D on the leaf beforehand
    twice: bool = False             # the access made again once the first filled the TLB
    maxphyaddr: int | None = None   # the guest's CPUID.80000008H:EAX[7:0] (None: KVM's)
    rsvd_bit: int | None = None     # the bit "rsvd" sets (None: MAXPHYADDR, the lowest reserved one)
    pkru: str = ""                  # "", "ad" or "wd": CR4.PKE = 1, the leaf has PKEY, PKRU sets that bit

    @property
    def id(self):
        """The pytest id: mode, page size, entry, flags, access, CR0.WP, feature, then the variants."""
        base = (f"{self.mode}-{SIZES[self.size]}-{self.level}-{'+'.join(self.flags) or 'rw'}-{self.access}"
                f"-wp{int(self.wp)}-{self.feature}")
        extra = [("nxe0", not self.nxe), ("ad", self.preset_ad), ("twice", self.twice),
                 (f"maxphy{self.maxphyaddr}", self.maxphyaddr is not None),
                 (f"bit{self.rsvd_bit}", self.rsvd_bit is not None), (f"pkru.{self.pkru}", bool(self.pkru))]
        return base + "".join(f"-{name}" for name, on in extra if on)


def cases(modes, *, flag_sets=FLAG_SETS, accesses=ACCESSES, features=("-", "smep", "smap"),
          levels=("leaf", "upper"), sizes=None, **variant):
    """Every meaningful case over the product of the arguments, with `variant` (Case's optional
    fields) applied to each; the combinations the SDM makes impossible or pointless are left out."""
    for mode in modes:
        m = get_mode(mode)
        for size, level, flags, (access, wp), feature in itertools.product(
                sizes or m.page_sizes, levels, flag_sets, accesses, features):
            if size not in m.page_sizes:
                continue
            if m.paging == "32" and ("nx" in flags or "rsvd" in flags or not variant.get("nxe", True)):
                continue  # 32-bit paging has no XD bit (so no EFER.NXE) and no reserved bits in these entries
            if variant.get("pkru") and m.paging not in ("4level", "5level"):
                continue  # protection keys exist only in IA-32e mode (SDM Vol. 3A 4.6.2)
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
            yield Case(mode, size, level, flags, access, wp, feature, **variant)


def _is_pdpte(paging, size, level):
    """Whether the case's entry is a PAE PDPTE (upper entry of a 2 MiB page)."""
    return paging == "pae" and size == MiB2 and level == "upper"


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


def requirement(kvm, case) -> str | None:
    """Why this host cannot run `case` (a missing CPU feature or capability), or None."""
    if case.size == GiB1 and not kvm.has_feature("pdpe1gb"):
        return f"1 GiB pages need {FEATURES['pdpe1gb']}, which KVM does not report"
    if case.feature != "-" and not kvm.has_feature(case.feature):
        return f"CR4.{case.feature.upper()} needs {FEATURES[case.feature]}, which KVM does not report"
    if case.pkru and not kvm.has_feature("pku"):
        return f"protection keys (CR4.PKE) need {FEATURES['pku']}, which KVM does not report"
    host = max_phys_addr(kvm.cached_supported_cpuid())
    if case.maxphyaddr is not None:
        if not kvm.check_extension("KVM_CAP_SMALLER_MAXPHYADDR"):
            return "a guest MAXPHYADDR below the host's needs KVM_CAP_SMALLER_MAXPHYADDR"
        if host <= case.maxphyaddr:
            return f"the host's MAXPHYADDR ({host}) is not above {case.maxphyaddr}"
    if "rsvd" in case.flags and case.rsvd_bit is None and (case.maxphyaddr or host) >= 52:
        return "MAXPHYADDR is 52: no reserved address bits to set"
    return None


def expected_fault(case) -> int | None:
    """The #PF error code the case's access must raise (SDM Vol. 3A 4.6, 4.7), or None."""
    mode = get_mode(case.mode)
    fmt = FORMATS[str(mode.paging)]
    leaf = fmt.levels - 1 if case.size == KiB4 else fmt.large_pages[case.size]   # the leaf's level, root = 0
    levels = leaf + 1
    at = leaf if case.level == "leaf" else leaf - 1
    flags = _entry_flags(case.flags, 51)

    def vec(bit, default, set_means):
        v = [default] * levels
        v[at] = bool(flags & bit) if set_means else not (flags & bit)
        return tuple(v)

    walk = Walk(vec(PTE_P, True, True), vec(PTE_RW, True, True), vec(PTE_US, True, True), vec(PTE_XD, False, True),
                tuple(("rsvd" in case.flags) and i == at for i in range(levels)))
    ctx = Context(case.access, mode.cpl, wp=case.wp, nxe=case.nxe and mode.paging != "32",
                  smep=case.feature == "smep", smap=case.feature == "smap", paging32=mode.paging == "32",
                  pke=bool(case.pkru), pk_ad=case.pkru == "ad", pk_wd=case.pkru == "wd")
    return page_fault(walk, ctx)


def _source(case, b, va, leaf_fault, fep):
    access = SOURCE[case.access].format(b=b)
    if fep:
        access = forced_emulation.forced(access, 64 if b == "rbx" else 32)
    lines = [f"mov {b}, {va:#x}"]
    if case.pkru:
        lines += ["xor ecx, ecx", "xor edx, edx", f"mov eax, {PKRU_BITS[case.pkru]:#x}", WRPKRU]
    for n in range(2 if case.twice else 1):
        lines.append(f"GUEST_ASSERT_RAISES PF({leaf_fault:#x}), fault{n}: {access}" if leaf_fault is not None
                     else access)
    return "\n".join(lines + ["GUEST_DONE"])


def _set_guest_maxphyaddr(g, kvm, bits):
    table = kvm.supported_cpuid_copy()
    leaf = find_entry(table, 0x80000008)
    leaf.eax = (leaf.eax & ~0xFF) | bits
    g.vcpu.set_cpuid(table)


def run_case(guest, kvm, case, fep=False):
    """Build the case's guest with the `guest` fixture, check KVM_TRANSLATE against the tables
    (api.rst 4.15), run the access (with `fep`, behind KVM's forced-emulation prefix) and check
    the fault, its error code and CR2, or the A and D flags the access leaves (SDM Vol. 3A 4.8).
    Raises the guest's failure (GuestFailure) naming what differs."""
    mode = get_mode(case.mode)
    maxphy = case.maxphyaddr or max_phys_addr(kvm.cached_supported_cpuid())
    rsvd_bit = maxphy if case.rsvd_bit is None else case.rsvd_bit
    b = "rbx" if mode.code_bits == 64 else "ebx"
    va = VA_4LEVEL if mode.paging in ("4level", "5level") else VA
    leaf_fault = expected_fault(case)
    g = guest(case.mode, _source(case, b, va, leaf_fault, fep), page_size=MiB2 if mode.paging != "32" else MiB4,
              nxe=None if case.nxe else False)
    if case.maxphyaddr is not None:
        _set_guest_maxphyaddr(g, kvm, case.maxphyaddr)
    g.vm.write(PA, b"\xc3")  # RET, for fetches
    pt = g.page_tables
    leaf = pt.leaf_level(case.size)
    pt.map(va & ~(case.size - 1), PA & ~(case.size - 1), case.size, PTE_P | PTE_RW | PTE_US)
    level = leaf if case.level == "leaf" else leaf - 1
    pdpte = _is_pdpte(mode.paging, case.size, case.level)
    entry = pt.read_entry(va, level)
    pt.write_entry(va, level, entry & ~(PTE_P | PTE_RW | PTE_US | PTE_XD) | _entry_flags(case.flags, rsvd_bit, pdpte))
    if case.pkru:
        pt.write_entry(va, leaf, pt.read_entry(va, leaf) | PKEY << PTE_PKEY_SHIFT)
    if case.preset_ad:
        _preset_accessed_dirty(pt, va, leaf, mode.paging)
    before = pt.walk(va)
    # Load CR3 again, as an OS does after changing a PDPT: with PAE paging the walk uses the PDPTE
    # registers loaded then, not memory (SDM Vol. 3A 4.4.1).
    g.set_sregs(g.vcpu.get_sregs())
    _check_translate(g, va, case)
    sregs = g.vcpu.get_sregs()
    sregs.cr0 = sregs.cr0 | CR0_WP if case.wp else sregs.cr0 & ~CR0_WP
    sregs.cr4 |= {"-": 0, "smep": CR4_SMEP, "smap": CR4_SMAP}[case.feature] | (CR4_PKE if case.pkru else 0)
    g.set_sregs(sregs)
    g.run_to_done()
    _check_outcome(g, pt, va, case, leaf_fault, before)


def _preset_accessed_dirty(pt, va, leaf, paging):
    # A PAE PDPTE has no A flag (bit 5 is reserved there, SDM Vol. 3A Table 4-8); D exists only in
    # an entry that maps a page.
    for level in range(1 if paging == "pae" else 0, leaf + 1):
        pt.write_entry(va, level, pt.read_entry(va, level) | PTE_A | (PTE_D if level == leaf else 0))


def _check_translate(g, va, case):
    reachable = "np" not in case.flags and "rsvd" not in case.flags and (case.nxe or "nx" not in case.flags)
    tr = g.vcpu.translate(va)
    if (tr.valid, tr.physical_address if tr.valid else None) != (int(reachable), PA if reachable else None):
        raise g.failure(f"KVM_TRANSLATE({va:#x}) = {tr}; the guest's tables "
                        f"{'map it to ' + hex(PA) if reachable else 'do not map it'} (api.rst 4.15)")


def _check_outcome(g, pt, va, case, leaf_fault, before):
    walk = pt.walk(va)
    problems = []
    if leaf_fault is not None:
        cr2 = g.exception_record()["cr2"]
        if cr2 != va:
            problems.append(f"#PF({describe_pfec(leaf_fault)}): CR2 {cr2:#x}, expected {va:#x}")
    else:
        # A PAE PDPTE has no A flag (bits 8:5 reserved, SDM Vol. 3A Table 4-8): no processor sets it there.
        with_a = walk[1:] if get_mode(case.mode).paging == "pae" else walk
        problems += [f"{name} A clear ({describe_flags(value)})" for name, _, value in with_a if not value & PTE_A]
        leaf_value = walk[-1][2]
        if bool(leaf_value & PTE_D) != (case.access == "write" or case.preset_ad):
            problems.append(f"leaf D={int(bool(leaf_value & PTE_D))} after a {case.access} "
                            f"({describe_flags(leaf_value)})")
    if case.preset_ad:
        # The flags are sticky: once set, the processor does not clear them (SDM Vol. 3A 4.8).
        problems += [f"{name} lost {describe_flags(old & (PTE_A | PTE_D) & ~new)} that was preset "
                     f"({describe_flags(new)})" for (name, _, old), (_, _, new) in zip(before, walk, strict=False)
                     if old & (PTE_A | PTE_D) & ~new]
    if problems:
        raise g.failure(f"{case.id}: " + "; ".join(problems))
