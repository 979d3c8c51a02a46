"""The SDM's access-rights rules for paging, as code: the oracle of suites/paging.

SDM Vol. 3A 4.6 (access rights, 4.6.2 protection keys), 4.7 (page-fault error code), 4.8
(accessed and dirty flags). Given the flags along a translation and the access, say whether it faults and with
which error code. Pure; unit-tested in tests/test_paging_model.py.
"""

from dataclasses import dataclass

from . import x86
from .x86 import PFEC_I, PFEC_P, PFEC_PK, PFEC_RSVD, PFEC_U, PFEC_W

# Error-code bits by name for messages, without the PFEC_ prefix ('P|W|U').
_PFEC_NAMES = {name.removeprefix("PFEC_"): bit for name, bit in vars(x86).items() if name.startswith("PFEC_")}


@dataclass(frozen=True)
class Walk:
    """The translation as the access sees it: every level's flags, root first."""

    present: tuple[bool, ...]
    writable: tuple[bool, ...]
    user: tuple[bool, ...]
    nx: tuple[bool, ...]
    reserved: tuple[bool, ...]


@dataclass(frozen=True)
class Context:
    """The access and the processor state the SDM's access rights depend on (Vol. 3A 4.6): the
    kind of access, the CPL, CR0.WP, EFER.NXE, CR4.SMEP, CR4.SMAP with EFLAGS.AC, whether the
    paging is 32-bit (which has no XD bit), and CR4.PKE with the PKRU access-disable and
    write-disable bits of the leaf's protection key (4.6.2; the caller sets `pke` only in IA-32e
    mode, where protection keys apply)."""
    access: str          # "read", "write" or "fetch"
    cpl: int             # 0 or 3
    wp: bool = True      # CR0.WP
    nxe: bool = True     # EFER.NXE (PAE and 4/5-level paging only)
    smep: bool = False   # CR4.SMEP
    smap: bool = False   # CR4.SMAP
    ac: bool = False     # EFLAGS.AC (SMAP override for explicit supervisor accesses)
    paging32: bool = False  # 32-bit paging: no NX bit
    pke: bool = False    # CR4.PKE (4-level and 5-level paging only)
    pk_ad: bool = False  # PKRU.ADi of the leaf's protection key i
    pk_wd: bool = False  # PKRU.WDi of the leaf's protection key i


def page_fault(walk: Walk, ctx: Context) -> int | None:
    """The #PF error code this access raises, or None when it is allowed."""
    user_access = ctx.cpl == 3
    code = (PFEC_W if ctx.access == "write" else 0) | (PFEC_U if user_access else 0)
    if ctx.access == "fetch" and ((ctx.nxe and not ctx.paging32) or ctx.smep):
        code |= PFEC_I
    # With EFER.NXE = 0 the XD bit of a present PAE or 4/5-level entry is reserved (SDM Vol. 3A
    # 4.4.2, 4.5.4: "If IA32_EFER.NXE = 0 and the P flag ... is 1, the XD flag (bit 63) is reserved").
    xd_reserved = not ctx.nxe and not ctx.paging32
    for level in range(len(walk.present)):
        if not walk.present[level]:
            return code  # P=0: not-present fault
        if walk.reserved[level] or (xd_reserved and walk.nx[level]):
            return code | PFEC_P | PFEC_RSVD
    # 4.7: PK is set for a data access to a user-mode address whose key's PKRU.AD is 1, or whose
    # PKRU.WD is 1 for a write that is a user-mode access or made with CR0.WP = 1; it is reported
    # along with any other access-rights violation, and is itself one (4.6.2).
    pk = (ctx.pke and ctx.access != "fetch" and all(walk.user)
          and (ctx.pk_ad or (ctx.pk_wd and ctx.access == "write" and (user_access or ctx.wp))))
    if _denied(walk, ctx) or pk:
        return code | PFEC_P | (PFEC_PK if pk else 0)
    return None


def _denied(walk: Walk, ctx: Context) -> bool:
    """Whether the access rights of 4.6.1 (without protection keys) forbid the access."""
    writable = all(walk.writable)
    user_page = all(walk.user)
    nx = any(walk.nx) and ctx.nxe and not ctx.paging32
    if ctx.cpl == 3:
        return not user_page or (ctx.access == "write" and not writable) or (ctx.access == "fetch" and nx)
    # Supervisor-mode access (SDM Vol. 3A 4.6.1)
    if ctx.access == "fetch":
        return nx or (ctx.smep and user_page)
    if ctx.smap and user_page and not ctx.ac:
        return True
    return ctx.access == "write" and not writable and ctx.wp


def describe_pfec(code: int) -> str:
    """A #PF error code by its bits' SDM names, for messages: 'P|W|U', or '0'."""
    return "|".join(name for name, bit in _PFEC_NAMES.items() if code & bit) or "0"
