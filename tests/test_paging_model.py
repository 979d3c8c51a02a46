"""The paging oracle against cases spelled out in SDM Vol. 3A 4.6 and 4.7."""

import pytest

from kvmtest.paging_model import Context, Walk, describe_pfec, page_fault
from kvmtest.x86 import PFEC_I, PFEC_P, PFEC_PK, PFEC_RSVD, PFEC_U, PFEC_W


def walk(levels=4, p=True, rw=True, us=True, nx=False, rsvd=False, at=-1):
    """All levels permissive except the one at `at` (default: the leaf)."""
    def vec(value, default):
        v = [default] * levels
        v[at] = value
        return tuple(v)
    return Walk(vec(p, True), vec(rw, True), vec(us, True), vec(nx, False), vec(rsvd, False))


@pytest.mark.parametrize("w,ctx,expected", [
    (walk(), Context("read", 0), None),
    (walk(p=False), Context("read", 0), 0),
    (walk(p=False), Context("write", 3), PFEC_W | PFEC_U),
    (walk(p=False, at=0), Context("fetch", 0), PFEC_I),
    (walk(rw=False), Context("write", 0, wp=True), PFEC_P | PFEC_W),
    (walk(rw=False), Context("write", 0, wp=False), None),
    (walk(rw=False), Context("write", 3, wp=False), PFEC_P | PFEC_W | PFEC_U),
    (walk(us=False), Context("read", 3), PFEC_P | PFEC_U),
    (walk(us=False, at=1), Context("read", 3), PFEC_P | PFEC_U),
    (walk(nx=True), Context("fetch", 0), PFEC_P | PFEC_I),
    # EFER.NXE = 0: XD is a reserved bit (4.4.2, 4.5.4) and a fetch sets I only with SMEP (4.7).
    (walk(nx=True), Context("fetch", 0, nxe=False), PFEC_P | PFEC_RSVD),
    (walk(nx=True, at=1), Context("read", 3, nxe=False), PFEC_P | PFEC_RSVD | PFEC_U),
    (walk(p=False), Context("fetch", 0, nxe=False), 0),
    (walk(p=False), Context("fetch", 0, nxe=False, smep=True), PFEC_I),
    (walk(), Context("fetch", 3, nxe=False), None),
    # Protection keys (4.6.2, 4.7 PK): data accesses to user pages only; WD stops supervisor
    # writes only with CR0.WP = 1; PK comes with any other violation.
    (walk(), Context("read", 3, pke=True, pk_ad=True), PFEC_P | PFEC_U | PFEC_PK),
    (walk(), Context("read", 0, pke=True, pk_ad=True), PFEC_P | PFEC_PK),
    (walk(), Context("fetch", 3, pke=True, pk_ad=True), None),
    (walk(us=False), Context("read", 0, pke=True, pk_ad=True), None),
    (walk(), Context("read", 3, pke=True, pk_wd=True), None),
    (walk(), Context("write", 3, pke=True, pk_wd=True), PFEC_P | PFEC_W | PFEC_U | PFEC_PK),
    (walk(), Context("write", 0, pke=True, pk_wd=True, wp=True), PFEC_P | PFEC_W | PFEC_PK),
    (walk(), Context("write", 0, pke=True, pk_wd=True, wp=False), None),
    (walk(rw=False), Context("write", 3, pke=True, pk_wd=True), PFEC_P | PFEC_W | PFEC_U | PFEC_PK),
    (walk(), Context("read", 3, pk_ad=True), None),
    (walk(p=False), Context("read", 3, pke=True, pk_ad=True), PFEC_U),
    (walk(nx=True), Context("read", 3), None),
    (walk(), Context("fetch", 0, smep=True), PFEC_P | PFEC_I),
    (walk(us=False), Context("fetch", 0, smep=True), None),
    (walk(), Context("read", 0, smap=True), PFEC_P),
    (walk(), Context("read", 0, smap=True, ac=True), None),
    (walk(rsvd=True), Context("read", 0), PFEC_P | PFEC_RSVD),
    (walk(levels=2), Context("fetch", 0, paging32=True), None),
    (walk(levels=2, p=False), Context("fetch", 0, paging32=True), 0),
])
def test_sdm_cases(w, ctx, expected):
    got = page_fault(w, ctx)
    assert got == expected, f"{ctx}: expected {expected if expected is None else describe_pfec(expected)}, " \
                            f"got {got if got is None else describe_pfec(got)}"


def test_pfec_names():
    assert describe_pfec(PFEC_P | PFEC_W | PFEC_U) == "P|W|U"
    assert describe_pfec(0) == "0"
