"""Whatever kvmtest handed out over a mapping it owns refuses use once the owner closed it.

api.rst 5: kvm_run (with the coalesced MMIO ring in a later page) and api.rst 8.29: the dirty
ring are mmap()ed from the vCPU fd; guest memory is a host mapping behind a memslot (4.35).
Closing the owner unmaps them, so a stale Exit, kvm_run view, dirty ring or memslot must
raise ClosedError naming the owner, never read freed memory or kill the interpreter. Checks
that would crash a broken kvmtest run in a fresh interpreter (the `isolated` fixture).
"""

import pytest

from kvmtest.errors import ClosedError, StaleExitError
from kvmtest.exits import IoExit
from kvmtest.guest.layout import MMIO_BASE


def _lines(out: str, label: str) -> str:
    found = [line for line in out.splitlines() if f" {label} " in f" {line} "]
    assert found, f"no outcome for {label!r} in:\n{out}"
    return found[0]


def test_responding_to_exits_of_a_closed_vcpu_is_closed_error(isolated):
    """An IN exit and an MMIO read exit answered after their vCPU closed (kvm_run unmapped)
    raise ClosedError naming the vCPU and the exit, and the interpreter survives."""
    out = isolated(f"""
        g = Guest(kvm, "long64", "in al, 0x10\\nmov rbx, {MMIO_BASE + 0x20:#x}\\nmov eax, dword ptr [rbx]\\nGUEST_DONE")
        io = g.run()
        io.respond(1)
        mmio = g.run()
        print("VCPU", g.vcpu.name, flush=True)
        g.vcpu.close()
        attempt("io", lambda: io.respond(0x5A))
        attempt("mmio", lambda: mmio.respond(0x12345678))
    """)
    vcpu = _lines(out, "VCPU").split()[1]
    assert _lines(out, "io") == (f"CLOSED io cannot respond to KVM_EXIT_IO(in port=0x10 size=1 count=1): {vcpu} is "
                                 "closed and its kvm_run unmapped")
    assert _lines(out, "mmio") == (f"CLOSED mmio cannot respond to KVM_EXIT_MMIO(read gpa={MMIO_BASE + 0x20:#x} "
                                   f"len=4): {vcpu} is closed and its kvm_run unmapped")


def test_kvm_run_views_refuse_use_after_close(isolated):
    """kvm_run obtained before close(), and fields nested in it, raise ClosedError on read
    and on write afterwards; asking the closed vCPU for kvm_run does too."""
    out = isolated("""
        g = Guest(kvm, "long64", "GUEST_DONE")
        run = g.vcpu.kvm_run
        sync = run.s.regs
        run.request_interrupt_window = 0
        g.vcpu.close()
        attempt("read", lambda: run.immediate_exit)
        attempt("write", lambda: setattr(run, "request_interrupt_window", 1))
        attempt("nested", lambda: sync.regs.rip)
        attempt("array", lambda: run.padding1[0])
        attempt("again", lambda: g.vcpu.kvm_run)
    """)
    for label in ("read", "write", "nested", "array", "again"):
        assert _lines(out, label).startswith(f"CLOSED {label} "), out
    assert "vcpu0's kvm_run was unmapped" in _lines(out, "read")


def test_closing_a_vm_while_another_thread_runs_its_vcpu(isolated):
    """close() on one thread while another is inside KVM_RUN kicks that vCPU out (api.rst 5,
    immediate_exit and a signal make KVM_RUN return EINTR) and unmaps kvm_run only after the
    run loop left it: the thread ends with KVM_EXIT_INTR, close() returns promptly, the next
    run raises ClosedError."""
    out = isolated("""
        g = Guest(kvm, "long64", "spin: jmp spin", timeout=30)
        vcpu = g.vcpu
        t = g.in_thread(until_done=False)
        time.sleep(0.5)
        start = time.monotonic()
        g.close()
        print("CLOSE_TOOK", round(time.monotonic() - start, 3), flush=True)
        attempt("thread", lambda: str(t.join(10)))
        attempt("rerun", lambda: vcpu.run())
    """)
    assert float(_lines(out, "CLOSE_TOOK").split()[1]) < 5, out
    assert _lines(out, "thread") == "RETURNED thread 'KVM_EXIT_INTR'", out
    assert _lines(out, "rerun").startswith("CLOSED rerun "), out


@pytest.mark.requires_cap("KVM_CAP_DIRTY_LOG_RING")
def test_dirty_ring_refuses_use_after_its_vcpu_closed(isolated):
    """The dirty ring (api.rst 8.29, mapped from the vCPU fd) and entries taken from it raise
    ClosedError after the vCPU closed."""
    out = isolated("""
        vm = kvm.create_vm()
        vm.enable_dirty_ring(64 * 1024)
        vcpu = vm.create_vcpu()
        ring = vcpu.dirty_ring
        entries = ring.entries
        entry = entries[0]
        vcpu.close()
        attempt("harvest", ring.harvest)
        attempt("flags", ring.flags)
        attempt("entries", lambda: ring.entries)
        attempt("entry", lambda: entry.flags)
        attempt("index", lambda: entries[1])
    """)
    for label in ("harvest", "flags", "entries", "entry", "index"):
        assert _lines(out, label).startswith(f"CLOSED {label} "), out
    assert "dirty ring was unmapped" in _lines(out, "entry")


@pytest.mark.requires_cap("KVM_CAP_COALESCED_MMIO")
def test_coalesced_ring_of_a_closed_vcpu_is_closed_error(guest):
    """The coalesced MMIO ring lives in the vCPU mapping (api.rst KVM_REGISTER_COALESCED_MMIO):
    draining it after close() is ClosedError, not a read of the unmapped page."""
    g = guest("long64", "GUEST_DONE")
    g.vm.register_coalesced_mmio(MMIO_BASE, 0x1000)
    vcpu = g.vcpu
    vcpu.close()
    with pytest.raises(ClosedError, match=rf"{vcpu.name}"):
        vcpu.drain_coalesced_ring()


def test_guest_memory_refuses_use_after_close(kvm):
    """Guest memory read or written through the Vm, a Memslot's mapping, or a deleted slot's
    mapping after the unmap raises ClosedError naming the VM or the slot."""
    vm = kvm.create_vm()
    slot = vm.add_memory(0, 0x200000)
    extra = vm.add_memory(0x400000, 0x1000)
    vm.write(0x10, b"kvm")
    vm.delete_memslot(extra.slot)
    with pytest.raises(ClosedError, match=r"slot 1 at 0x400000 was unmapped"):
        extra.mapping.write(0, b"x")
    vm.close()
    with pytest.raises(ClosedError, match=rf"{vm.name} is closed; its guest memory is unmapped"):
        vm.read(0x10, 3)
    with pytest.raises(ClosedError, match=rf"{vm.name} is closed"):
        vm.write_u64(0x10, 1)
    with pytest.raises(ClosedError, match=r"slot 0 at 0x0 was unmapped"):
        slot.mapping.read(0x10, 3)
    with pytest.raises(ClosedError):
        _ = slot.mapping.addr  # the property raises


def test_guest_helpers_refuse_use_after_close(guest):
    """A closed Guest's memory helpers (exception record, IDT gates) raise ClosedError."""
    g = guest("long64", "GUEST_DONE")
    g.close()
    with pytest.raises(ClosedError):
        g.exception_record()
    with pytest.raises(ClosedError):
        g.set_idt_gate(0x40, 0x8000)
    with pytest.raises(ClosedError):
        g.run()


def test_stats_fd_refuses_reads_after_close(guest):
    """A binary stats fd (api.rst 4.133) read after close() raises ClosedError."""
    g = guest("long64", "GUEST_DONE")
    stats = g.vcpu.stats()
    name = stats.descriptors[0].name
    stats.close()
    with pytest.raises(ClosedError, match=r"stats is closed"):
        stats.read()
    with pytest.raises(ClosedError):
        stats.value(name)


def test_responding_after_the_next_kvm_run_is_refused(guest):
    """Once KVM_RUN was entered again, kvm_run describes the new exit (api.rst 5), so a late
    response to the old one is StaleExitError and leaves the new exit's data alone."""
    g = guest("long64", "in al, 0x10\nmovzx ebx, al\nin al, 0x11\nGUEST_SYNC rbx\nGUEST_SYNC rax\nGUEST_DONE")
    first = g.expect_exit(IoExit, port=0x10)
    first.respond(0x11)
    second = g.expect_exit(IoExit, port=0x11)
    with pytest.raises(StaleExitError, match=r"cannot respond to KVM_EXIT_IO\(in port=0x10 .*1 more time"):
        first.respond(0x99)
    second.respond(0x22)
    assert g.run_to_done() == [0x11, 0x22]
