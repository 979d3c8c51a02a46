"""A failing test's kernel-log section holds only what its own process made KVM log (no KVM needed).

KVM names the task in its lines: upstream "kvm [TGID]: vcpu0, ..." (kvm_pr_unimpl/vcpu_unimpl),
kvm_pvm "kvm-pvm: pid TID vcpu0: ...". A fake /dev/kmsg (a socket of records in devices/kmsg's
'level,seq,usec,flags;text' form) stands in for the kernel log.
"""

import os
import socket
import subprocess
import sys

from kvmtest.reports import kmsg


def _gone_pid() -> int:
    """A pid that no task has any more (a child that exited and was reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_lines_are_this_process_s_others_are_dropped_and_the_rest_counted():
    me, other, gone = os.getpid(), 1, _gone_pid()  # pid 1 (init) is alive and never this process
    lines = [(1.0, f"kvm-pvm: pid {me} vcpu0: the VMM set CR0.PG with EFER.LME clear"),
             (1.1, f"kvm [{me}]: vcpu0, guest rIP: 0x1000 unhandled rdmsr: 0xc0011029"),
             (1.2, f"kvm-pvm: pid {other} vcpu0: another VMM's line"),
             (1.3, f"kvm [{other}]: vcpu1, guest rIP: 0x2000 unhandled wrmsr"),
             (1.4, "kvm-pvm: INTERNAL_ERROR in batch emul: rip=0x4a7b cpl=0 cr3=0x0"),
             (1.5, f"kvm-pvm: pid {gone} vcpu0: a task that has exited")]
    mine, unattributed = kmsg.attribute(lines, {me})
    assert mine == [lines[0][1], lines[1][1]]
    assert unattributed == [1.4, 1.5]


def test_a_thread_of_this_process_is_this_process():
    import threading

    tids = []
    t = threading.Thread(target=lambda: (tids.append(threading.get_native_id()), done.wait()))
    done = threading.Event()
    t.start()
    try:
        while not tids:
            pass
        mine, _ = kmsg.attribute([(0.0, f"kvm-pvm: pid {tids[0]} vcpu1: from a vCPU thread")], {os.getpid()})
        assert mine == [f"kvm-pvm: pid {tids[0]} vcpu1: from a vCPU thread"]
    finally:
        done.set()
        t.join()


def test_a_failing_test_shows_its_own_kvm_lines_only(pytester, tmp_path):
    """End to end: the plugin's section for a failing test, in its JUnit system-out, has the line
    naming the test's process, not the other process's line, and says what it left out."""
    from kvmtest import plugin
    from kvmtest.reports.results import read_junit

    # a SOCK_SEQPACKET pair returns one record per read, as /dev/kmsg does
    reader, writer = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    reader.setblocking(False)
    r, w = reader.fileno(), writer.fileno()
    log = kmsg.KernelLog.__new__(kmsg.KernelLog)
    log.fd, log.tasks = r, set()
    saved, plugin._kernel_log = plugin._kernel_log, log
    pytester.makepyfile(test_k=f"""
        import os

        def test_fails():
            for text in ("kvm-pvm: pid {{}} vcpu0: MINE".format(os.getpid()), "kvm-pvm: pid 1 vcpu0: NOT MINE",
                         "pvm_set_cr0: 12 callbacks suppressed"):
                os.write({w}, ("4,1,3182583189,-;" + text + "\\n").encode())
            assert False
    """)
    junit = tmp_path / "k.xml"
    try:
        pytester.runpytest_inprocess(f"--kvm-junit={junit}", "-p", "no:cacheprovider")
    finally:
        plugin._kernel_log = saved
        reader.close()
        writer.close()
    assert [r.status for r in read_junit(junit)] == ["failed"]
    section = junit.read_text().split("--- kernel log (KVM) ---", 1)[1]
    assert f"pid {os.getpid()} vcpu0: MINE" in section and "NOT MINE" not in section
    assert "1 KVM log lines between 3182.583189 and 3182.583189 s since boot name no task" in section
