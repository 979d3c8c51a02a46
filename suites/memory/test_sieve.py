"""A memory sweep with a result that can be checked: the guest runs a sieve of Eratosthenes over a
buffer and reports how many primes it found; the host compares the count with the prime-counting
function and the buffer with the sieve's bitmap (kvm-unit-tests sieve).

Guest memory is the user memory of its memslot (api.rst 4.35 KVM_SET_USER_MEMORY_REGION), reached
through whatever translation the guest set up: none with paging off, the identity map with 4 KiB or
2 MiB pages, or fresh mappings whose pages are scattered over the slot (SDM Vol. 3A 4.5: each
linear page goes to the physical page its leaf entry names). Every byte the guest stores must land
in the host page its translation names, and every load must return the last store there.

The sweep is sized so that a host that emulates CPL0 and 32-bit code one instruction at a time
still finishes in well under a second; 64-bit CPL3 code sweeps a MiB.
"""

import random

import pytest

from kvmtest.guest import layout as L
from kvmtest.guest.mode_select import select
from kvmtest.guest.modes import get_mode, regs_for
from kvmtest.guest.paging import KiB4, MiB2
from kvmtest.x86 import PTE_P, PTE_RW, PTE_US

BUFFER = 0x200000              # a slot of its own, right above slot 0, inside the identity map
FRESH_VA = 0x7F0000000000      # never mapped before the test maps it (canonical, 4-level paging)
FRESH_ROUNDS = 3
# pi(n), the number of primes below n, for the buffer sizes used (pi(2^13), pi(2^14), pi(2^20)).
PRIMES_BELOW = {0x2000: 1028, 0x4000: 1900, 0x100000: 82025}

SIEVE = """
start:
    mov {si}, {table:#x}
round:
    mov {di}, [{si}]
    test {di}, {di}
    jz finish
    call sieve
    GUEST_SYNC eax
    add {si}, {width}
    jmp round
finish:
    GUEST_DONE

sieve:                          # {di}: the buffer; eax: primes below N
    xor ecx, ecx
fill:
    mov byte ptr [{di} + {cx}], 1
    inc ecx
    cmp ecx, N
    jb fill
    mov byte ptr [{di}], 0
    mov byte ptr [{di} + 1], 0
    xor eax, eax
    mov ecx, 2
outer:
    cmp ecx, N
    jae sieved
    cmp byte ptr [{di} + {cx}], 0
    je next
    inc eax
    lea {dx}, [{cx} + {cx}]
mark:
    cmp {dx}, N
    jae next
    mov byte ptr [{di} + {dx}], 0
    add {dx}, {cx}
    jmp mark
next:
    inc ecx
    jmp outer
sieved:
    ret
"""


def sieve_bitmap(n: int) -> bytes:
    """The buffer a finished sieve leaves: 1 at each prime below n, 0 elsewhere."""
    flags = bytearray([1]) * n
    flags[0:2] = b"\0\0"
    for i in range(2, int(n ** 0.5) + 1):
        if flags[i]:
            flags[i * i::i] = bytes(len(range(i * i, n, i)))
    return bytes(flags)


def _size(mode) -> int:
    return 0x100000 if get_mode(mode).code_bits == 64 and get_mode(mode).user else 0x2000


def _guest(guest, mode, n, bases, **kw):
    m = get_mode(mode)
    r = regs_for(mode)
    width = m.code_bits // 8
    source = SIEVE.format(table=L.DATA, width=width, **r)
    g = guest(mode, source, symbols={"N": n}, **kw)
    g.vm.add_memory(BUFFER, max(n, KiB4))
    g.vm.write(L.DATA, b"".join(b.to_bytes(width, "little") for b in [*bases, 0]))
    return g


def _check(g, n, counts, rounds, where):
    want = PRIMES_BELOW[n]
    # the host's bitmap agrees with pi(n)
    assert len(sieve_bitmap(n)) == n and sum(sieve_bitmap(n)) == want, \
        f"host sieve_bitmap({n}): {len(sieve_bitmap(n))} entries with {sum(sieve_bitmap(n))} primes, " \
        f"expected {n} entries with pi({n}) = {want}"
    assert counts == [want] * rounds, \
        f"{where}: the guest's sieve over {n:#x} bytes counted {counts} primes, expected pi({n}) = {want} each round"


@pytest.mark.modes(*select(paging=False, protected=True, sample="per-code-size"))
def test_sieve_with_paging_off(guest, mode):
    """With paging off, linear addresses are physical (SDM Vol. 3A 4.1.1): the sieve over the
    slot counts pi(N) primes and leaves the sieve's bitmap in the slot's host memory."""
    n = _size(mode)
    g = _guest(guest, mode, n, [BUFFER])
    _check(g, n, g.run_to_done(), 1, f"{mode}, paging off")
    assert g.vm.read(BUFFER, n) == sieve_bitmap(n), f"{mode}: the slot's host memory differs from the sieve's bitmap"


@pytest.mark.modes(*select(code_bits=64))
@pytest.mark.parametrize("page_size", [pytest.param(KiB4, id="4k"), pytest.param(MiB2, id="2m")])
def test_sieve_through_the_identity_map(guest, mode, page_size):
    """Through the identity map built of 4 KiB or 2 MiB pages, the sieve counts pi(N) primes and
    leaves the sieve's bitmap in the slot's host memory (SDM Vol. 3A 4.5)."""
    n = _size(mode)
    g = _guest(guest, mode, n, [BUFFER], page_size=page_size)
    _check(g, n, g.run_to_done(), 1, f"{mode}, {page_size:#x}-byte identity map")
    assert g.vm.read(BUFFER, n) == sieve_bitmap(n), f"{mode}: the slot's host memory differs from the sieve's bitmap"


@pytest.mark.modes(*select(code_bits=64))
def test_sieve_through_fresh_scattered_mappings(guest, mode):
    """Three times, a fresh linear range (never mapped before) whose 4 KiB pages map the slot's
    pages in a shuffled order: the sieve counts pi(N) primes each time, and the slot's pages read
    in the last mapping's order hold the sieve's bitmap (SDM Vol. 3A 4.5: each page goes where
    its leaf entry points)."""
    n = _size(mode)
    pages = n // KiB4
    rng = random.Random(0x51E7E)
    orders = [rng.sample(range(pages), pages) for _ in range(FRESH_ROUNDS)]
    bases = [FRESH_VA + k * 0x40000000 for k in range(FRESH_ROUNDS)]
    g = _guest(guest, mode, n, bases)
    flags = PTE_P | PTE_RW | (PTE_US if get_mode(mode).user else 0)
    for base, order in zip(bases, orders, strict=True):
        for i, page in enumerate(order):
            g.page_tables.map(base + i * KiB4, BUFFER + page * KiB4, KiB4, flags)
    _check(g, n, g.run_to_done(), FRESH_ROUNDS, f"{mode}, fresh scattered 4 KiB mappings")
    seen = b"".join(g.vm.read(BUFFER + page * KiB4, KiB4) for page in orders[-1])
    assert seen == sieve_bitmap(n), \
        f"{mode}: the slot's pages read in the last mapping's order differ from the sieve's bitmap"
