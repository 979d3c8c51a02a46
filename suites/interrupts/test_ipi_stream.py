"""A long stream of IPIs from one vCPU to another that halts between them, while user space moves
both vCPU threads between host CPUs, or the process's memory between NUMA nodes (migrate_pages(2),
which moves the pages behind guest memory and KVM's APIC access page): every IPI must wake the
halted vCPU and run its handler once, none lost (SDM Vol. 3A 11.6.1 fixed delivery; Vol. 2A HLT:
an enabled interrupt resumes execution; selftests xapic_ipi_test, with and without -m)."""

import ctypes
import os
import time

import pytest

from kvmtest import libc
from kvmtest.guest import layout as L
from kvmtest.guest.aps import ready_ap
from kvmtest.guest.paging import KiB4
from kvmtest.x86 import APIC_DEFAULT_PHYS_BASE, PTE_P, PTE_PCD, PTE_RW

pytestmark = pytest.mark.requires_cap("KVM_CAP_IRQCHIP")
APIC = APIC_DEFAULT_PHYS_BASE
IPIS = 2000
VECTOR = 0xA5
RECEIVED, HALTS, WAKES = L.DATA, L.DATA + 4, L.DATA + 8   # the halter's counters
SYS_MIGRATE_PAGES = 256           # x86-64 system call number
SPIN = 5_000_000                  # the sender's bound on each wait, so a lost IPI fails, not hangs

STREAM = f"""
    mov rbx, {APIC:#x}
    mov dword ptr [rbx + 0xF0], 0x1FF
    mov rdi, {RECEIVED:#x}                      # the halter's counters: received, halts, wakes
    GUEST_SYNC 1
    xor r12d, r12d
send:
    inc r12d
    mov dword ptr [rbx + 0x310], 0x01000000     # destination: APIC ID 1
    mov dword ptr [rbx + 0x300], {0x4000 | VECTOR:#x}
    mov ecx, {SPIN}
wait:
    cmp dword ptr [rdi], r12d         # handler ran for this IPI,
    jne 1f
    cmp dword ptr [rdi + 8], r12d            # the halter woke from its HLT,
    jne 1f
    cmp r12d, {IPIS}
    je sent
    cmp dword ptr [rdi + 4], r12d            # and is about to halt again
    ja sent
1:  dec ecx
    jnz wait
    GUEST_SYNC r12
    GUEST_FAIL "an IPI was not taken by the halted vCPU"
sent:
    cmp r12d, {IPIS}
    jb send
    GUEST_DONE
halter:
    mov rbx, {APIC:#x}
    mov dword ptr [rbx + 0xF0], 0x1FF
    mov rdi, {RECEIVED:#x}
    GUEST_SYNC 2
again:
    lock inc dword ptr [rdi + 4]
    sti
    hlt
    cli
    lock inc dword ptr [rdi + 8]
    cmp dword ptr [rdi], {IPIS}
    jb again
    GUEST_DONE
handler:
    lock inc dword ptr [rdi]
    mov dword ptr [rbx + 0xB0], 0               # EOI
    iretq
"""


def _numa_nodes() -> list[int]:
    try:
        with open("/sys/devices/system/node/online") as f:
            text = f.read().strip()
    except OSError:
        return [0]
    nodes: list[int] = []
    for part in text.split(","):
        first, _, last = part.partition("-")
        nodes += range(int(first), int(last or first) + 1)
    return nodes


class _MoveThreads:
    """Pin each vCPU thread to the next host CPU, round after round."""

    def __init__(self):
        self.cpus = sorted(os.sched_getaffinity(0))
        if len(self.cpus) < 2:
            pytest.skip(f"needs two host CPUs to move the vCPU threads between; this process may use {self.cpus}")

    def __call__(self, threads, round_: int) -> None:
        for i, t in enumerate(threads):
            try:
                os.sched_setaffinity(t.thread.native_id, {self.cpus[(round_ + i) % len(self.cpus)]})
            except ProcessLookupError:  # the thread just ended
                pass


class _MovePages:
    """migrate_pages(2) of this whole process from one NUMA node to the next, round after round."""

    def __init__(self):
        self.nodes = _numa_nodes()
        if len(self.nodes) < 2:
            pytest.skip(f"needs two NUMA nodes to move the process's pages between; this host has {self.nodes}")

    def __call__(self, threads, round_: int) -> None:
        src, dst = (self.nodes[(round_ + k) % len(self.nodes)] for k in (0, 1))
        masks = [ctypes.c_ulong(1 << src), ctypes.c_ulong(1 << dst)]
        left = libc.syscall(SYS_MIGRATE_PAGES, 0, 64, ctypes.addressof(masks[0]), ctypes.addressof(masks[1]))
        assert left >= 0, f"migrate_pages from node {src} to {dst} failed: errno {libc.get_errno()}"


MOVES: dict[str, type[_MoveThreads] | type[_MovePages]] = {
    "threads-between-cpus": _MoveThreads, "pages-between-numa-nodes": _MovePages}


@pytest.mark.parametrize("move", list(MOVES))
def test_every_ipi_of_a_stream_wakes_the_halted_vcpu(guest, move):
    """vCPU 0 sends 2,000 fixed IPIs to vCPU 1, each only after vCPU 1 took the previous one in
    its handler, woke from HLT and went back towards HLT; meanwhile, every few milliseconds, both
    vCPU threads move to another host CPU (sched_setaffinity) or the process's pages to another NUMA
    node (migrate_pages). All 2,000 arrive: vCPU 1 counts 2,000 handler runs and 2,000 wake-ups."""
    mover = MOVES[move]()
    g = guest("long64", STREAM, irqchip=True)
    g.page_tables.map(APIC, APIC, KiB4, PTE_P | PTE_RW | PTE_PCD)
    g.set_idt_gate(VECTOR, "handler")
    halter = ready_ap(g, g.add_vcpu("halter"))
    assert g.expect_sync() == 1
    threads = [g.in_thread(halter, timeout=60), g.in_thread(timeout=60)]
    moves = 0
    try:
        while any(t.alive() for t in threads):
            mover([t for t in threads if t.alive()], moves)
            moves += 1
            time.sleep(0.002)
    finally:
        results = [t.join(60) for t in threads]
    counts = {name: g.vm.read_u32(addr) for name, addr in (("handled", RECEIVED), ("woke", WAKES))}
    assert results == [[], []] and counts == {"handled": IPIS, "woke": IPIS}, \
        f"after {IPIS} IPIs ({moves} rounds of thread moves): vCPU 1 {counts}, syncs (halter, sender) {results}"
