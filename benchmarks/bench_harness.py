"""Harness overhead against plain C, measured side by side in one run.

    python benchmarks/bench_harness.py [--rounds 5] [--exits 20000] [--cycles 200]

Two workloads, each done by kvmtest (Python) and by benchmarks/kvm_bench.c (compiled here
with the system compiler), alternating round by round so both see the same machine:
  exit loop      a real-mode guest doing OUT in a loop; time per exit through Vcpu.run()
  VM lifecycle   create VM, vCPU, 2 MiB slot, first exit, close
Reports the median time per operation and the Python/C ratio. Targets: exit loop <= 1.05x,
VM lifecycle <= 1.10x. "ctypes floor" (KVM_RUN through ctypes with nothing else in the loop)
shows how close any Python harness can get on the host at hand.
"""

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from kvmtest import Kvm
from kvmtest.abi.structs import kvm_regs
from kvmtest.exits import IoExit

HERE = Path(__file__).resolve().parent
CODE = 0x8000
LOOP = bytes([0xE6, 0x10, 0xEB, 0xFC])  # 1: out 0x10, al; jmp 1b
TARGETS = {"exit loop": 1.05, "VM lifecycle": 1.10}


def build_c(tmp: Path) -> Path:
    cc = shutil.which("cc") or shutil.which("gcc")
    if not cc:
        sys.exit("bench_harness: no C compiler (cc) to build the baseline")
    out = tmp / "kvm_bench"
    subprocess.run([cc, "-O2", "-o", str(out), str(HERE / "kvm_bench.c")], check=True)
    return out


def vm_up(kvm):
    vm = kvm.create_vm()
    vm.add_memory(0, 0x200000)
    vm.write(CODE, LOOP)
    vcpu = vm.create_vcpu()
    sregs = vcpu.get_sregs()
    sregs.cs.base, sregs.cs.selector = 0, 0
    vcpu.set_sregs(sregs)
    regs = kvm_regs(rip=CODE, rflags=2)  # zeroed like the C baseline's memset
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
    """The floor for any Python harness: KVM_RUN through ctypes with nothing else in the loop."""
    from kvmtest.abi.numbers import KVM_RUN
    from kvmtest.libc import ioctl_function

    vm, vcpu = vm_up(kvm)
    first_exit(vcpu)
    fd = vcpu.fd
    t0 = time.perf_counter_ns()
    for _ in range(n):
        ioctl_function(fd, KVM_RUN, None)
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


def c_run(binary: Path, what: str, n: int) -> float:
    out = subprocess.run([str(binary), what, str(n)], check=True, capture_output=True, text=True).stdout
    return float(out.strip())


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--exits", type=int, default=20000)
    p.add_argument("--cycles", type=int, default=200)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp, Kvm() as kvm:
        binary = build_c(Path(tmp))
        results = {"exit loop": ([], []), "ctypes floor": ([], []), "VM lifecycle": ([], [])}
        for _ in range(args.rounds):
            c_exits = c_run(binary, "exits", args.exits)
            results["exit loop"][1].append(c_exits)
            results["exit loop"][0].append(py_exits(kvm, args.exits))
            results["ctypes floor"][1].append(c_exits)
            results["ctypes floor"][0].append(py_floor_exits(kvm, args.exits))
            results["VM lifecycle"][1].append(c_run(binary, "lifecycle", args.cycles))
            results["VM lifecycle"][0].append(py_lifecycle(kvm, args.cycles))
    ok = True
    print(f"{'workload':<14} {'kvmtest':>12} {'C':>12} {'ratio':>7} {'target':>7}")
    for name, (py, c) in results.items():
        ratio = statistics.median(py) / statistics.median(c)
        target = TARGETS.get(name)
        ok &= target is None or ratio <= target
        print(f"{name:<14} {statistics.median(py) / 1000:>10.2f}us {statistics.median(c) / 1000:>10.2f}us "
              f"{ratio:>6.3f}x {f'{target:.2f}x' if target else '(info)':>7}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
