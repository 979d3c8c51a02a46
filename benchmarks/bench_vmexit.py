"""Exit latency as the guest sees it, per kind of exit (kvm-unit-tests x86/vmexit.c, in kvmtest's
terms), beside a user-space exit measured in the same run.

    python benchmarks/bench_vmexit.py [--iterations 2000] [--rounds 3] [--only cpuid,ipi]

Each kind is a guest loop of `--iterations` of one operation between two GUEST_SYNCs (CPL3 kinds
run 10x as many: their loop runs natively); the host times the loop and reports the median time
per operation over `--rounds`, and its ratio to the user-space exit of the same CPL (OUT to an
unclaimed port at CPL0, a store to unbacked memory at CPL3, one KVM_RUN per exit through
Vcpu.run()). Kinds, with the vmexit.c section each stands for:
  loop               the loop alone (a NOP)                      -
  cpuid              CPUID leaf 0                                vmexit_cpuid
  hypercall          VMCALL/VMMCALL (the vendor's) of an
                     unknown number (-KVM_ENOSYS)                vmexit_vmcall
  mov_from_cr8       MOV RAX, CR8                                vmexit_mov_from_cr8
  mov_to_cr8         MOV CR8, RAX                                vmexit_mov_to_cr8
  inl_pmtimer        IN from port 0xB008 (the PM timer under
                     QEMU; a user-space exit here too)           vmexit_inl_pmtimer
  ipi                fixed x2APIC IPI to a running vCPU, until
                     its handler counted it                      vmexit_ipi
  ipi_halt           the same to a vCPU in HLT                   vmexit_ipi_halt
  pause              PAUSE (pause-loop exiting, if the host
                     has it)                                     vmexit_ple_round_robin
  tscdeadline        TSC deadline 1000 cycles ahead, until the
                     timer interrupt arrived                     vmexit_tscdeadline
  tscdeadline_immed  the same with a deadline already past       vmexit_tscdeadline_immed
  cr0_wp             CR0.WP cleared and set again                vmexit_cr0_wp
  cr4_pge            CR4.PGE cleared and set again               vmexit_cr4_pge
Prints the date and the load average before and after. No targets: a baseline to compare kernels
and hosts with. On kvm_pvm, CPL0 code is emulated one instruction at a time, so the CPL0 loops
cost far more there than on hardware-assisted hosts.
"""

import argparse
import datetime
import os
import statistics
import sys
import time

from kvmtest import Kvm
from kvmtest.abi.constants import KVM_MP_STATE_RUNNABLE
from kvmtest.errors import GuestFailure, GuestTimeout
from kvmtest.guest import Guest
from kvmtest.guest import layout as L
from kvmtest.guest.apic_source import X2APIC_ON
from kvmtest.guest.protocol import Done, Sync
from kvmtest.x86 import (
    CR0_WP,
    CR4_PGE,
    MSR_IA32_TSC_DEADLINE,
    MSR_IA32_X2APIC_EOI,
    MSR_IA32_X2APIC_ICR,
    MSR_IA32_X2APIC_LVT_TIMER,
)

VECTOR = 0x40
COUNT = L.DATA          # interrupts the handler has counted
STOP = L.DATA + 8       # nonzero: the IPI target leaves its loop
READY = L.DATA + 16     # nonzero: the IPI target has its APIC on and IF=1
SPIN = 10_000_000       # bound on each wait for an interrupt

# Counts the interrupt and EOIs it; keeps every register it uses.
HANDLER = f"""
handler:
    push rax
    push rcx
    push rdx
    push rbx
    mov rbx, {COUNT:#x}
    inc qword ptr [rbx]
    mov ecx, {MSR_IA32_X2APIC_EOI:#x}
    xor eax, eax
    xor edx, edx
    wrmsr
    pop rbx
    pop rdx
    pop rcx
    pop rax
    iretq
"""

# Waits until the handler's count moved past r14 (loaded before the operation).
AWAIT = f"""
    mov rbx, {COUNT:#x}
    mov r15d, {SPIN}
2:  cmp qword ptr [rbx], r14
    jne 3f
    dec r15d
    jnz 2b
    GUEST_FAIL "no interrupt arrived"
3:
"""


def _deadline(delta: int) -> str:
    return f"""
    mov rbx, {COUNT:#x}
    mov r14, qword ptr [rbx]
    rdtsc
    shl rdx, 32
    or rax, rdx
    add rax, {delta}
    mov rdx, rax
    shr rdx, 32
    mov ecx, {MSR_IA32_TSC_DEADLINE:#x}
    wrmsr
""" + AWAIT


TIMER_SETUP = X2APIC_ON + f"""
    mov ecx, {MSR_IA32_X2APIC_LVT_TIMER:#x}
    mov eax, {2 << 17 | VECTOR:#x}
    xor edx, edx
    wrmsr
    sti
"""

# The sender waits for the target to be ready, so no IPI reaches a disabled APIC.
IPI_SETUP = X2APIC_ON + f"""
    mov rbx, {READY:#x}
    mov r15d, {SPIN}
4:  cmp qword ptr [rbx], 0
    jne 5f
    dec r15d
    jnz 4b
    GUEST_FAIL "the IPI target did not get ready"
5:
"""

SEND = f"""
    mov ecx, {MSR_IA32_X2APIC_ICR:#x}
    mov eax, {VECTOR:#x}
    mov edx, 1
    wrmsr
"""

IPI = f"""
    mov rbx, {COUNT:#x}
    mov r14, qword ptr [rbx]
""" + SEND + AWAIT

# After the timed loop: tell the target to stop, and wake it if it halts.
IPI_TAIL = f"""
    mov rbx, {STOP:#x}
    mov qword ptr [rbx], 1
""" + SEND


def _kinds(hypercall: str) -> dict[str, tuple[str, str, tuple[str, ...]]]:
    """name -> (setup, one operation, modes)."""
    both = ("long64", "long64-cpl3")
    return {
        "loop": ("", "nop", both),
        "cpuid": ("", "xor eax, eax\ncpuid", both),
        "hypercall": ("", f"mov eax, 0x7fff\n{hypercall}", both),
        "mov_from_cr8": ("", "mov rax, cr8", ("long64",)),
        "mov_to_cr8": ("", "xor eax, eax\nmov cr8, rax", ("long64",)),
        "pause": ("", "pause", both),
        "cr0_wp": ("", f"mov rax, cr0\nxor rax, {CR0_WP:#x}\nmov cr0, rax\nxor rax, {CR0_WP:#x}\nmov cr0, rax",
                   ("long64",)),
        "cr4_pge": ("", f"mov rax, cr4\nxor rax, {CR4_PGE:#x}\nmov cr4, rax\nxor rax, {CR4_PGE:#x}\nmov cr4, rax",
                    ("long64",)),
        "tscdeadline": (TIMER_SETUP, _deadline(1000), ("long64",)),
        "tscdeadline_immed": (TIMER_SETUP, _deadline(0), ("long64",)),
        "ipi": (IPI_SETUP, IPI, ("long64",)),
        "ipi_halt": (IPI_SETUP, IPI, ("long64",)),
    }


USER_EXITS = {"inl_pmtimer": ("mov dx, 0xB008\nin eax, dx", "long64"),
              "out (user space)": ("out 0x10, al", "long64"),
              "mmio (user space)": (f"mov rbx, {L.MMIO_BASE:#x}\nmov byte ptr [rbx], 0", "long64-cpl3")}

TARGET = {"ipi": "1:  mov rbx, {stop:#x}\n    cmp qword ptr [rbx], 0\n    je 1b",
          "ipi_halt": "1:  hlt\n    mov rbx, {stop:#x}\n    cmp qword ptr [rbx], 0\n    je 1b"}


def _source(setup: str, body: str, n: int, target: str = "", tail: str = "") -> str:
    return f"""
    {setup}
    GUEST_SYNC 0
    mov r12, {n}
again:
    {body}
    dec r12
    jnz again
    GUEST_SYNC 1
    {tail}
    GUEST_DONE
{HANDLER}
target:
    {X2APIC_ON}
    sti
    mov rbx, {READY:#x}
    mov qword ptr [rbx], 1
    {target}
    GUEST_DONE
"""


def time_kind(kvm, name, setup, body, mode, n) -> float:
    """Seconds per operation of one in-kernel kind."""
    target = TARGET.get(name, "").format(stop=STOP)
    source = _source(setup, body, n, target, IPI_TAIL if target else "")
    g = Guest(kvm, mode, source, irqchip=True, name=name, timeout=10)
    try:
        g.set_idt_gate(VECTOR, "handler")
        other = None
        if target:
            ap = g.add_vcpu("target")
            ap.set_mp_state(KVM_MP_STATE_RUNNABLE)   # an AP with an in-kernel APIC waits for SIPI otherwise
            other = g.in_thread(ap, timeout=120)
        if g.expect_sync() != 0:
            sys.exit(f"bench_vmexit: {name}: the guest did not reach its first GUEST_SYNC")
        t0 = time.perf_counter()
        event = g.run()
        elapsed = time.perf_counter() - t0
        if not (isinstance(event, Sync) and event.value == 1):
            sys.exit(f"bench_vmexit: {name} ({mode}): expected GUEST_SYNC 1 after the loop, got {event}")
        if other is not None:
            event = g.run()   # the sender stops the target and wakes it (IPI_TAIL)
            if not isinstance(event, Done):
                sys.exit(f"bench_vmexit: {name}: expected GUEST_DONE from the sender, got {event}")
            other.join(120)
        return elapsed / n
    finally:
        g.close()


def time_user_exit(kvm, name, body, mode, n) -> float:
    """Seconds per user-space exit: one Vcpu.run() per operation."""
    g = Guest(kvm, mode, _source("", body, n), name=name, timeout=120)
    try:
        if g.expect_sync() != 0:
            sys.exit(f"bench_vmexit: {name}: the guest did not reach its first GUEST_SYNC")
        run = g.vcpu.run
        t0 = time.perf_counter()
        for _ in range(n):
            run()
        elapsed = time.perf_counter() - t0
        event = g.run()
        if not (isinstance(event, Sync) and event.value == 1):
            sys.exit(f"bench_vmexit: {name}: expected GUEST_SYNC 1 after {n} exits, got {event}")
        return elapsed / n
    finally:
        g.close()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--iterations", type=int, default=2000, help="operations per CPL0 loop (CPL3: 10x)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--only", default="", help="comma-separated kinds (default: all)")
    args = p.parse_args(argv)
    load_before = os.getloadavg()[0]
    started = datetime.datetime.now().isoformat(timespec="seconds")
    print(f"bench_vmexit: {started}, load {load_before:.2f}, {os.cpu_count()} CPUs, {args.iterations} iterations "
          f"x {args.rounds} rounds", flush=True)
    with Kvm() as kvm:
        leaf0 = next(e for e in kvm.cached_supported_cpuid() if e.function == 0)
        vendor = b"".join(r.to_bytes(4, "little") for r in (leaf0.ebx, leaf0.edx, leaf0.ecx))
        kinds = _kinds("vmmcall" if vendor in (b"AuthenticAMD", b"HygonGenuine") else "vmcall")
        only = set(filter(None, args.only.split(",")))
        unknown = only - set(kinds) - set(USER_EXITS)
        if unknown:
            p.error(f"--only: unknown kinds {sorted(unknown)}; known: {', '.join(list(kinds) + list(USER_EXITS))}")
        rows: dict[tuple[str, str], list[float]] = {}
        failed: dict[tuple[str, str], str] = {}
        for _ in range(args.rounds):
            for name, (body, mode) in USER_EXITS.items():
                if not only or name in only or "(user space)" in name:
                    n = args.iterations * (10 if mode.endswith("cpl3") else 1)
                    rows.setdefault((name, mode), []).append(time_user_exit(kvm, name, body, mode, n))
            for name, (setup, body, modes) in kinds.items():
                if only and name not in only:
                    continue
                for mode in modes:
                    if (name, mode) in failed:
                        continue
                    n = args.iterations * (10 if mode.endswith("cpl3") else 1)
                    try:
                        t = time_kind(kvm, name, setup, body, mode, n)
                    except (GuestTimeout, GuestFailure) as e:
                        # A host that never completes an operation (kvm_pvm's CPL0 hypercall, say)
                        # gets a line saying so, and the other kinds still run.
                        failed[(name, mode)] = str(e).splitlines()[0]
                        continue
                    rows.setdefault((name, mode), []).append(t)
    user = {mode: statistics.median(v) for (name, mode), v in rows.items() if "(user space)" in name}
    print(f"{'kind':<20} {'mode':<12} {'per op':>10} {'vs user-space exit':>19}")
    for (name, mode), v in rows.items():
        t = statistics.median(v)
        print(f"{name:<20} {mode:<12} {t * 1e6:>8.2f}us {t / user[mode]:>18.2f}x")
    for (name, mode), why in failed.items():
        print(f"{name:<20} {mode:<12} did not complete: {why}")
    print(f"bench_vmexit: load before {load_before:.2f}, after {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
