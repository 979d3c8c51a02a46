"""Processes killed with VMs and running vCPUs in flight leave KVM usable: new VMs are created and
run as before (selftests hardware_disable_test).

api.rst 2: a VM's lifecycle is tied to its file descriptor, and its resources are freed when the
last reference to it is released, which a process killed by SIGKILL does for every fd it held,
including vCPUs in the middle of KVM_RUN. api.rst 4.2 KVM_CREATE_VM: "The new VM has no virtual
cpus and no memory": whatever the killed processes left behind, a new VM starts clean.
"""

import os
import random
import select
import signal
import subprocess
import sys
import time

from kvmtest.exits import IoExit

ROUNDS = 3
# Seconds a child may take to start Python, import kvmtest, build its guest and enter KVM_RUN: under
# QEMU's TCG (`kvmtest run --kernel` without nested virtualization) that took over 20 s on a loaded host.
READY_WAIT = 120
READY = b"vcpus running\n"
# The child: one VM, a CPL0 and a CPL3 vCPU spinning inside KVM_RUN on threads of their own. It
# says so once both are in KVM_RUN and waits to be killed (its 60 s KVM_RUN limit ends it if not).
CHILD = """
import sys, threading, time
from kvmtest.guest.builder import Guest
from kvmtest.kvm import Kvm

g = Guest(Kvm(), "long64", "spin:\\njmp spin", user_pages=True, timeout=60)
vcpus = [g.vcpu, g.add_vcpu("spin", mode="long64-cpl3")]
for vcpu in vcpus:
    threading.Thread(target=vcpu.run, daemon=True).start()
while not all(vcpu.in_run for vcpu in vcpus):
    time.sleep(0.001)
sys.stdout.write("vcpus running\\n")
sys.stdout.flush()
time.sleep(60)
"""


def _start_child():
    return subprocess.Popen([sys.executable, "-c", CHILD], stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _wait_ready(child):
    ready, _, _ = select.select([child.stdout], [], [], READY_WAIT)
    line = child.stdout.readline() if ready else b""
    if line != READY:
        child.kill()
        _, err = child.communicate(timeout=20)
        raise AssertionError(f"the child process did not get its vCPUs into KVM_RUN (said {line!r}, exit status "
                             f"{child.returncode}): {err.decode(errors='replace')[-2000:]}")


def test_processes_killed_with_running_vcpus_leave_kvm_usable(kvm, guest):
    """Three times, a process with a VM whose CPL0 and CPL3 vCPUs are inside KVM_RUN on their own
    threads is killed with SIGKILL 0-2 ms after they entered the guest; each dies of that signal
    (not earlier, of an error). Afterwards a new VM's two vCPUs run guest code to GUEST_DONE with
    the results the code computes, and OUT exits reach user space as before (api.rst 2, 4.2)."""
    rng = random.Random(0x4B11)
    for i in range(ROUNDS):
        child = _start_child()
        _wait_ready(child)
        time.sleep(rng.uniform(0, 0.002))
        assert child.poll() is None, \
            f"round {i}: the child exited ({child.returncode}) before it was killed: {child.stderr.read()!r:.2000}"
        os.kill(child.pid, signal.SIGKILL)
        child.communicate(timeout=20)
        assert child.returncode == -signal.SIGKILL, \
            f"round {i}: the child ended with status {child.returncode}, expected death by SIGKILL"

    g = guest("long64", """
        mov al, 0x5a
        out 0x10, al
        mov eax, 6
        imul eax, eax, 7
        GUEST_SYNC eax
        GUEST_DONE
    GUEST_AT_CPL 3
    second:
        mov ebx, 0x1234
        add ebx, 0x4321
        GUEST_SYNC ebx
        GUEST_DONE
    """, user_pages=True)
    second = g.add_vcpu("second", mode="long64-cpl3")
    g.expect_exit(IoExit, port=0x10, size=1, data=b"\x5a")
    assert g.run_to_done() == [42], "the new VM's CPL0 vCPU computed the wrong value"
    assert g.run_to_done(vcpu=second) == [0x5555], "the new VM's CPL3 vCPU computed the wrong value"
