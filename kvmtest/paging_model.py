"""The SDM's access-rights rules for paging, as code: the oracle of suites/paging.

SDM Vol. 3A 4.6 (access rights), 4.7 (page-fault error code), 4.8 (accessed and dirty
flags). Given the flags along a translation and the access, say whether it faults and with
which error code. Pure; unit-tested in tests/test_paging_model.py.
"""

from dataclasses import dataclass

PFEC_P, PFEC_W, PFEC_U, PFEC_RSVD, PFEC_I, PFEC_PK = 1, 2, 4, 8, 16, 32


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
    access: str          # "read", "write" or "fetch"
    cpl: int             # 0 or 3
    wp: bool = True      # CR0.WP
    nxe: bool = True     # EFER.NXE (PAE and 4/5-level paging only)
    smep: bool = False   # CR4.SMEP
    smap: bool = False   # CR4.SMAP
    ac: bool = False     # EFLAGS.AC (SMAP override for explicit supervisor accesses)
    paging32: bool = False  # 32-bit paging: no NX bit


def page_fault(walk: Walk, ctx: Context) -> int | None:
    """The #PF error code this access raises, or None when it is allowed."""
    user_access = ctx.cpl == 3
    code = (PFEC_W if ctx.access == "write" else 0) | (PFEC_U if user_access else 0)
    if ctx.access == "fetch" and ((ctx.nxe and not ctx.paging32) or ctx.smep):
        code |= PFEC_I
    for level in range(len(walk.present)):
        if not walk.present[level]:
            return code  # P=0: not-present fault
        if walk.reserved[level]:
            return code | PFEC_P | PFEC_RSVD
    writable = all(walk.writable)
    user_page = all(walk.user)
    nx = any(walk.nx) and ctx.nxe and not ctx.paging32
    if user_access:
        if not user_page:
            return code | PFEC_P
        if ctx.access == "write" and not writable:
            return code | PFEC_P
        if ctx.access == "fetch" and nx:
            return code | PFEC_P
        return None
    # Supervisor-mode access (SDM Vol. 3A 4.6.1)
    if ctx.access == "fetch":
        if nx or (ctx.smep and user_page):
            return code | PFEC_P
        return None
    if ctx.smap and user_page and not ctx.ac:
        return code | PFEC_P
    if ctx.access == "write" and not writable and ctx.wp:
        return code | PFEC_P
    return None


def describe_pfec(code: int) -> str:
    names = [n for n, b in (("P", PFEC_P), ("W", PFEC_W), ("U", PFEC_U), ("RSVD", PFEC_RSVD), ("I", PFEC_I),
                            ("PK", PFEC_PK)) if code & b]
    return "|".join(names) or "0"
