"""Harness overhead against plain C, measured side by side in one run.

    python benchmarks/bench_harness.py [--rounds 5] [--exits 20000] [--cycles 200] [--json FILE]

Two workloads, each done by kvmtest (Python) and by benchmarks/kvm_bench.c (compiled here
with the system compiler), alternating round by round so both see the same machine:
  exit loop      a real-mode guest doing OUT in a loop; time per exit through Vcpu.run()
  VM lifecycle   create VM, vCPU, 2 MiB slot, first exit, close
Reports the median time per operation and the Python/C ratio. Targets: exit loop <= 1.05x,
VM lifecycle <= 1.10x. Two floors, measured in the same rounds, show how close any Python
harness can get on the host at hand:
  ctypes floor     KVM_RUN with nothing else in the loop, issued the way Vcpu.run() issues it
                   (kvmtest.ioctl.kvm_run_entry: a prepared ctypes call)
  lifecycle floor  the lifecycle's system calls through bare ctypes, no kvmtest objects
Then what the exit loop costs above the ctypes floor, per exit, part by part: Vcpu.run() timed
with KVM_RUN replaced by a C function that does nothing (so no kernel noise), and each part of
it timed alone.

measure() returns every figure as a dict (benchmarks/bench_speed.py imports it); render() gives
the text main() prints: date, host, load average before and after, rounds, medians and ratios.
"""

import argparse
import ctypes
import datetime
import functools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from kvmtest import Kvm
from kvmtest.abi import structs as S
from kvmtest.abi.numbers import (
    KVM_CREATE_VCPU,
    KVM_CREATE_VM,
    KVM_GET_SREGS,
    KVM_RUN,
    KVM_SET_REGS,
    KVM_SET_SREGS,
    KVM_SET_USER_MEMORY_REGION,
)
from kvmtest.exit_parsers import PARSERS, UNPARSED
from kvmtest.exits import IoExit
from kvmtest.ioctl import kvm_run_entry, trace_append

HERE = Path(__file__).resolve().parent
CODE = 0x8000
MEM = 2 << 20
LOOP = bytes([0xE6, 0x10, 0xEB, 0xFC])  # 1: out 0x10, al; jmp 1b
TARGETS = {"exit loop": 1.05, "VM lifecycle": 1.10}
WORKLOADS = ("exit loop", "ctypes floor", "VM lifecycle", "lifecycle floor")
FLOOR_OF = {"exit loop": "ctypes floor", "VM lifecycle": "lifecycle floor"}


def build_c(tmp: Path) -> Path:
    cc = shutil.which("cc") or shutil.which("gcc")
    if not cc:
        sys.exit("bench_harness: no C compiler (cc) to build the baseline")
    out = tmp / "kvm_bench"
    subprocess.run([cc, "-O2", "-o", str(out), str(HERE / "kvm_bench.c")], check=True)
    return out


def vm_up(kvm):
    vm = kvm.create_vm()
    vm.add_memory(0, MEM)
    vm.write(CODE, LOOP)
    vcpu = vm.create_vcpu()
    sregs = vcpu.get_sregs()
    sregs.cs.base, sregs.cs.selector = 0, 0
    vcpu.set_sregs(sregs)
    regs = S.kvm_regs(rip=CODE, rflags=2)  # zeroed like the C baseline's memset
    vcpu.set_regs(regs)
    return vm, vcpu


def first_exit(vcpu):
    e = vcpu.run()
    if not isinstance(e, IoExit) or e.port != 0x10:
        sys.exit(f"bench_harness: unexpected exit {e}")


def py_exits(kvm, n: int) -> float:
    vm, vcpu = vm_up(kvm)
    first_exit(vcpu)
    run = vcpu.run
    t0 = time.perf_counter_ns()
    for _ in range(n):
        run()
    t1 = time.perf_counter_ns()
    vm.close()
    return (t1 - t0) / n


def py_floor_exits(kvm, n: int) -> float:
    """The floor for any Python harness: KVM_RUN through ctypes with nothing else in the loop, the
    call Vcpu.run() makes (a ctypes call with argtypes costs ~0.2 us more: no floor)."""
    vm, vcpu = vm_up(kvm)
    first_exit(vcpu)
    enter = kvm_run_entry(vcpu.fd)
    t0 = time.perf_counter_ns()
    for _ in range(n):
        enter()
    t1 = time.perf_counter_ns()
    vm.close()
    return (t1 - t0) / n


def py_lifecycle(kvm, n: int) -> float:
    t0 = time.perf_counter_ns()
    for _ in range(n):
        vm, vcpu = vm_up(kvm)
        first_exit(vcpu)
        vm.close()
    return (time.perf_counter_ns() - t0) / n


# --- the lifecycle floor: the C program's system calls, in its order, through bare ctypes --------

_libc = ctypes.CDLL(None, use_errno=True)
_ioctl = _libc._FuncPtr(("ioctl", _libc))
_ioctl.restype = ctypes.c_int
_ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p]
_mmap = _libc._FuncPtr(("mmap", _libc))
_mmap.restype = ctypes.c_void_p
_mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
_munmap = _libc._FuncPtr(("munmap", _libc))
_munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]


def _check(ok: bool, what: str):
    if not ok:
        err = ctypes.get_errno()
        sys.exit(f"bench_harness: lifecycle floor: {what} failed: {os.strerror(err) if err else 'unexpected result'}")


def bare_lifecycle(kvm_fd: int, run_size: int, n: int) -> float:
    """kvm_bench.c's lifecycle (mmap, memcpy, slot, vCPU, kvm_run mapping, sregs, regs, one KVM_RUN
    checked for its OUT, unmap and close; KVM_GET_VCPU_MMAP_SIZE asked once, not per cycle) through
    ctypes alone: what any Python harness pays before it adds objects, checks and messages."""
    byref, memmove = ctypes.byref, ctypes.memmove
    t0 = time.perf_counter_ns()
    for _ in range(n):
        vm = _ioctl(kvm_fd, KVM_CREATE_VM, None)
        _check(vm >= 0, "KVM_CREATE_VM")
        mem = _mmap(None, MEM, 3, 0x02 | 0x20 | 0x4000, -1, 0)  # RW, private anonymous, noreserve
        _check(mem not in (None, ctypes.c_void_p(-1).value), "mmap")
        memmove(mem + CODE, LOOP, len(LOOP))
        region = S.kvm_userspace_memory_region(0, 0, 0, MEM, mem)
        _check(_ioctl(vm, KVM_SET_USER_MEMORY_REGION, byref(region)) == 0, "KVM_SET_USER_MEMORY_REGION")
        cpu = _ioctl(vm, KVM_CREATE_VCPU, None)
        _check(cpu >= 0, "KVM_CREATE_VCPU")
        run_addr = _mmap(None, run_size, 3, 0x01, cpu, 0)  # RW, shared
        _check(run_addr not in (None, ctypes.c_void_p(-1).value), "mmap of kvm_run")
        sregs = S.kvm_sregs()
        _check(_ioctl(cpu, KVM_GET_SREGS, byref(sregs)) == 0, "KVM_GET_SREGS")
        sregs.cs.base, sregs.cs.selector = 0, 0
        _check(_ioctl(cpu, KVM_SET_SREGS, byref(sregs)) == 0, "KVM_SET_SREGS")
        regs = S.kvm_regs(rip=CODE, rflags=2)
        _check(_ioctl(cpu, KVM_SET_REGS, byref(regs)) == 0, "KVM_SET_REGS")
        _check(_ioctl(cpu, KVM_RUN, None) == 0, "KVM_RUN")
        run = S.kvm_run.from_address(run_addr)
        _check(run.exit_reason == 2 and run.exit.io.port == 0x10, "the first exit (OUT to port 0x10)")
        del run
        _munmap(run_addr, run_size)
        os.close(cpu)
        os.close(vm)
        _munmap(mem, MEM)
    return (time.perf_counter_ns() - t0) / n


def c_run(binary: Path, what: str, n: int) -> float:
    out = subprocess.run([str(binary), what, str(n)], check=True, capture_output=True, text=True).stdout
    return float(out.strip())


# --- the exit loop above the floor, part by part -------------------------------------------------

def _best(loop, n: int, repeats: int) -> float:
    """The fastest of `repeats` timings of loop(n), per iteration, in ns (CPU-bound: the fastest is
    the one least disturbed by the rest of the machine)."""
    best = None
    for _ in range(repeats):
        t0 = time.perf_counter_ns()
        loop(n)
        t = (time.perf_counter_ns() - t0) / n
        best = t if best is None else min(best, t)
    return best


def run_parts(kvm, n: int = 50000, repeats: int = 7) -> dict:
    """What Vcpu.run() does per exit besides the KVM_RUN system call, in ns: run() timed with
    KVM_RUN replaced by a C function that does nothing (labs), less that call, and the parts of it
    timed alone, each as run() does it. Reaches into the vCPU (its prepared KVM_RUN call, its
    kvm_run and mapping view): this is a measurement of those internals."""
    vm, vcpu = vm_up(kvm)
    first_exit(vcpu)  # kvm_run now holds an OUT exit, which every run() below parses again
    nop = _libc._FuncPtr(("labs", _libc))
    nop.restype = ctypes.c_int
    nop_call = functools.partial(nop, vcpu.fd, KVM_RUN, None)  # labs(fd): never -1, "success"
    vcpu._enter_kvm_run = nop_call
    run, kvm_run, view = vcpu.run, vcpu._kvm_run, vcpu._view
    lock_a, lock_b = threading.Lock(), threading.Lock()
    get = PARSERS.get

    def loop_run(k):
        for _ in range(k):
            run()

    def loop_call(k):
        for _ in range(k):
            nop_call()

    def loop_exit(k):
        for g in range(k):
            reason = kvm_run.exit_reason
            get(reason, UNPARSED)(reason, kvm_run, view, (vcpu, g))

    exit_ = vcpu.run()

    def loop_trace(k):
        for _ in range(k):
            trace_append(exit_)  # as Vcpu.run() records it

    def loop_locks(k):
        for _ in range(k):
            lock_a.acquire()
            lock_b.acquire()
            lock_b.release()
            lock_a.release()

    class Armed:
        _run_thread = _run_timeout = None

    armed, get_ident = Armed(), threading.get_ident

    def loop_watchdog(k):
        for _ in range(k):
            armed._run_timeout = 10.0
            armed._run_thread = get_ident()
            armed._run_thread = None

    def loop_empty(k):
        for _ in range(k):
            pass

    try:
        empty = _best(loop_empty, n, repeats)
        total = _best(loop_run, n, repeats) - _best(loop_call, n, repeats)
        parts = {
            "typed exit": _best(loop_exit, n, repeats) - empty,
            "trace entry": _best(loop_trace, n, repeats) - empty,
            "run lock and guard lock": _best(loop_locks, n, repeats) - empty,
            "watchdog deadline": _best(loop_watchdog, n, repeats) - empty,
        }
    finally:
        vm.close()
    parts["the rest"] = total - sum(parts.values())
    return {"total": total, "parts": parts}


WHY = {
    "typed exit": "every exit comes back parsed as its typed, frozen exit (here IoExit with the OUT "
                  "data), remembering its vCPU and KVM_RUN count for respond()",
    "trace entry": "failure reports list the recent ioctls and exits (kvmtest.ioctl.recent)",
    "run lock and guard lock": "close() on another thread waits for a KVM_RUN in flight before it unmaps "
                               "kvm_run; the watchdog never kicks a KVM_RUN that has already ended",
    "watchdog deadline": "a guest that never exits is kicked after its timeout (GuestTimeout): the running "
                         "thread and the timeout are set before KVM_RUN, the thread cleared after it",
    "the rest": "the method call, the use-after-close check, the KVM_RUN count a stale exit is refused by, "
                "the errno and timeout checks",
}


# --- measuring and reporting ----------------------------------------------------------------------

def _load() -> tuple[float, float, float]:
    return tuple(round(x, 2) for x in os.getloadavg())


def measure(rounds: int = 5, exits: int = 20000, cycles: int = 200, parts: bool = True) -> dict:
    """Every figure of one run: date, host, load average before and after, rounds and sizes, and per
    workload (WORKLOADS) the medians in ns of kvmtest and C, their ratio, the target (None: for
    information) and whether it was met, with every round's figures; with `parts`, the exit loop
    above the ctypes floor, part by part (run_parts)."""
    result: dict = {"date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                    "host": f"{os.uname().release} {os.uname().version}", "cpus": os.cpu_count(),
                    "load_before": _load(), "rounds": rounds, "exits": exits, "cycles": cycles}
    figures: dict = {name: ([], []) for name in WORKLOADS}
    with tempfile.TemporaryDirectory() as tmp, Kvm() as kvm:
        binary = build_c(Path(tmp))
        run_size = kvm.vcpu_mmap_size()
        for _ in range(rounds):
            c_exits = c_run(binary, "exits", exits)
            figures["exit loop"][1].append(c_exits)
            figures["exit loop"][0].append(py_exits(kvm, exits))
            figures["ctypes floor"][1].append(c_exits)
            figures["ctypes floor"][0].append(py_floor_exits(kvm, exits))
            c_cycle = c_run(binary, "lifecycle", cycles)
            figures["VM lifecycle"][1].append(c_cycle)
            figures["VM lifecycle"][0].append(py_lifecycle(kvm, cycles))
            figures["lifecycle floor"][1].append(c_cycle)
            figures["lifecycle floor"][0].append(bare_lifecycle(kvm.fd, run_size, cycles))
        if parts:
            result["above floor"] = run_parts(kvm)
    result["load_after"] = _load()
    for name, (py, c) in figures.items():
        target = TARGETS.get(name)
        ratio = statistics.median(py) / statistics.median(c)
        result[name] = {"kvmtest_ns": statistics.median(py), "c_ns": statistics.median(c), "ratio": ratio,
                        "target": target, "met": None if target is None else ratio <= target,
                        "kvmtest_rounds_ns": py, "c_rounds_ns": c}
    if parts:
        result["above floor"]["measured"] = result["exit loop"]["kvmtest_ns"] - result["ctypes floor"]["kvmtest_ns"]
    return result


def _us(ns: float) -> str:
    return f"{ns / 1000:,.2f} us" if ns < 100_000 else f"{ns / 1000:,.0f} us"


def render(result: dict) -> str:
    """The text of one run (measure()), README-ready: a header line, the table, the exit loop above
    its floor part by part, and a sentence per target."""
    lines = [f"bench_harness: {result['date']}, {result['host']}, {result['cpus']} CPUs; {result['rounds']} rounds "
             f"of {result['exits']:,} exits and {result['cycles']} lifecycles each; load average (1/5/15 min) "
             f"{'/'.join(map(str, result['load_before']))} before, {'/'.join(map(str, result['load_after']))} after",
             "",
             f"{'workload':<16} {'kvmtest':>12} {'C':>12} {'ratio':>7} {'target':>8}"]
    for name in WORKLOADS:
        r = result[name]
        target = f"{r['target']:.2f}x" if r["target"] else "(info)"
        lines.append(f"{name:<16} {_us(r['kvmtest_ns']):>12} {_us(r['c_ns']):>12} {r['ratio']:>6.3f}x {target:>8}"
                     + ("" if r["met"] is None else ("  met" if r["met"] else "  not met")))
    above = result.get("above floor")
    if above:
        lines += ["", f"exit loop above the ctypes floor: {_us(above['measured'])} per exit in this run; Vcpu.run() "
                      f"with KVM_RUN replaced by a no-op C call costs {_us(above['total'])} more than that call:"]
        for part, ns in above["parts"].items():
            lines.append(f"  {_us(ns):>9}  {part}: {WHY[part]}")
    loop, floor = result["exit loop"], result["ctypes floor"]
    life, life_floor = result["VM lifecycle"], result["lifecycle floor"]
    lines += ["",
              f"Exit loop: {loop['ratio']:.3f}x of C (target {loop['target']:.2f}x); the bare KVM_RUN call through "
              f"ctypes alone is {floor['ratio']:.3f}x, so "
              + ("the target is met." if loop["met"] else
                 ("no Python harness can meet the target on this host; " if floor["ratio"] > loop["target"] else "")
                 + f"Vcpu.run() is {_us(loop['kvmtest_ns'] - floor['kvmtest_ns'])} per exit above that floor."),
              f"VM lifecycle: {life['ratio']:.3f}x of C (target {life['target']:.2f}x, "
              f"{'met' if life['met'] else 'not met'}); the same system calls through bare ctypes are "
              f"{life_floor['ratio']:.3f}x."]
    return "\n".join(lines)


def positive(text: str) -> int:
    """argparse type: a whole number, 1 or more (a median of no rounds, a time per zero exits, mean nothing)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a whole number, 1 or more")
    return value


def writable_file(text: str) -> Path:
    """argparse type: a file path whose directory exists and is writable (checked before measuring)."""
    path = Path(text)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir() or not os.access(folder, os.W_OK) or path.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: cannot be written (no such directory, not writable, or a directory)")
    return path


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=positive, default=5)
    p.add_argument("--exits", type=positive, default=20000)
    p.add_argument("--cycles", type=positive, default=200)
    p.add_argument("--no-parts", action="store_true", help="leave out the part-by-part figures of the exit loop")
    p.add_argument("--json", type=writable_file, default=None, help="also write every figure to this JSON file")
    args = p.parse_args(argv)
    result = measure(args.rounds, args.exits, args.cycles, parts=not args.no_parts)
    print(render(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if all(result[name]["met"] for name in TARGETS) else 1


if __name__ == "__main__":
    sys.exit(main())
