"""The time-stamp counter: RDTSC after writes of IA32_TSC and IA32_TSC_ADJUST by the guest and by
the host (SDM Vol. 3B 18.17 "Time-Stamp Counter", 18.17.3 "Time-Stamp Counter Adjustment"),
the guest TSC's rate (api.rst KVM_GET_TSC_KHZ, KVM_SET_TSC_KHZ) and the vCPU's TSC offset
attribute (Documentation/virt/kvm/devices/vcpu.rst KVM_VCPU_TSC_CTRL)."""

import time

import pytest

from kvmtest import host_cpu
from kvmtest.abi import constants as C
from kvmtest.timing import bracketed_pair
from kvmtest.x86 import MSR_IA32_TSC, MSR_IA32_TSC_ADJUST

MASK64 = (1 << 64) - 1
RDTSC64 = "rdtsc\nshl rdx, 32\nor rax, rdx\n"
READ_TSC_ADJUST = f"mov ecx, {MSR_IA32_TSC_ADJUST:#x}\nrdmsr\nshl rdx, 32\nor rax, rdx\nGUEST_SYNC rax\nGUEST_DONE"


def _one_second(vcpu) -> int:
    """TSC ticks in one second at the vCPU's rate (KVM_GET_TSC_KHZ): the slack allowed between a
    TSC write and the next read, far more than the few (emulated) instructions between them."""
    return vcpu.get_tsc_khz() * 1000


def _signed(value: int) -> int:
    return value - (1 << 64) if value >> 63 else value


@pytest.mark.modes(sample="per-code-size", cpl=0)
@pytest.mark.parametrize("written", [0, 10**11], ids=["zero", "1e11"])
def test_rdtsc_after_wrmsr_tsc_starts_from_the_written_value(guest, mode, written):
    """WRMSR to IA32_TSC sets the counter ("the time-stamp counter can be written with WRMSR",
    SDM Vol. 3B 18.17), so the RDTSC right after it reads the written value plus the ticks
    since: at least the value and less than a second of ticks above it (kvm-unit-tests tsc.c
    writes 0 and 10^11)."""
    g = guest(mode, f"""
        mov ecx, {MSR_IA32_TSC:#x}
        mov eax, {written & 0xFFFFFFFF:#x}
        mov edx, {written >> 32:#x}
        wrmsr
        rdtsc
        GUEST_SYNC edx
        GUEST_SYNC eax
        GUEST_DONE""")
    high, low = g.run_to_done()
    tsc = high << 32 | low
    assert written <= tsc < written + _one_second(g.vcpu), \
        f"RDTSC after WRMSR IA32_TSC = {written:#x} read {tsc:#x}; expected {written:#x} plus under a second of ticks"


@pytest.mark.requires_cpu("tsc_adjust")
def test_tsc_adjust_is_zero_at_reset(guest):
    """IA32_TSC_ADJUST is 0 at reset (SDM Vol. 3B 18.17.3): the guest's first RDMSR of it and the
    host's KVM_GET_MSRS on the new vCPU both read 0 (kvm-unit-tests tsc_adjust.c)."""
    g = guest("long64", READ_TSC_ADJUST)
    host = g.vcpu.get_msr(MSR_IA32_TSC_ADJUST)
    (guest_value,) = g.run_to_done()
    assert (host, guest_value) == (0, 0), \
        f"IA32_TSC_ADJUST of a new vCPU: KVM_GET_MSRS read {host:#x}, the guest's RDMSR {guest_value:#x}; expected 0"


@pytest.mark.requires_cpu("tsc_adjust")
@pytest.mark.parametrize("delta", [1 << 40, -(1 << 40)], ids=["plus-2^40", "minus-2^40"])
def test_guest_tsc_adjust_write_moves_the_tsc(guest, delta):
    """"If an execution of WRMSR to the IA32_TSC_ADJUST MSR adds (or subtracts) value X from that
    MSR, the logical processor also adds (or subtracts) value X from the TSC" (SDM Vol. 3B
    18.17.3): RDTSC after the guest writes IA32_TSC_ADJUST = X (from 0) is X above the RDTSC
    before it, plus under a second of ticks, and RDMSR reads X back (kvm-unit-tests
    tsc_adjust.c; selftests tsc_msrs_test)."""
    g = guest("long64", f"""
        {RDTSC64}
        mov r8, rax
        mov ecx, {MSR_IA32_TSC_ADJUST:#x}
        mov rax, {delta & MASK64:#x}
        mov rdx, rax
        shr rdx, 32
        wrmsr
        {RDTSC64}
        sub rax, r8
        GUEST_SYNC rax
        rdmsr
        shl rdx, 32
        or rax, rdx
        GUEST_SYNC rax
        GUEST_DONE""")
    moved, adjust = g.run_to_done()
    moved = _signed(moved)
    assert adjust == delta & MASK64, f"RDMSR IA32_TSC_ADJUST read {adjust:#x} after WRMSR {delta & MASK64:#x}"
    assert delta <= moved < delta + _one_second(g.vcpu), \
        f"RDTSC moved by {moved:#x} across WRMSR IA32_TSC_ADJUST = {delta:#x}; expected {delta:#x} plus under a " \
        "second of ticks"


@pytest.mark.requires_cpu("tsc_adjust")
def test_host_tsc_adjust_write_is_read_by_the_guest_and_leaves_the_tsc(guest):
    """KVM_SET_MSRS of IA32_TSC_ADJUST sets the MSR the guest reads (api.rst 4.19), and, being a
    host write that restores state rather than the guest's WRMSR of SDM 18.17.3, leaves the TSC
    where it was: KVM_GET_MSRS IA32_TSC moves by the elapsed ticks only, not by the 2^40 written
    (selftests tsc_msrs_test: "Host: writes to MSR_IA32_TSC_ADJUST do not modify the TSC")."""
    g = guest("long64", READ_TSC_ADJUST)
    before = g.vcpu.get_msr(MSR_IA32_TSC)
    g.vcpu.set_msr(MSR_IA32_TSC_ADJUST, 1 << 40)
    after = g.vcpu.get_msr(MSR_IA32_TSC)
    assert 0 <= after - before < _one_second(g.vcpu), \
        f"KVM_GET_MSRS IA32_TSC {before:#x} before and {after:#x} after the host wrote IA32_TSC_ADJUST = 2^40"
    assert g.run_to_done() == [1 << 40], "the guest's RDMSR IA32_TSC_ADJUST after the host wrote 2^40"


@pytest.mark.modes(code_bits=64)
def test_rdtsc_after_a_host_tsc_write(guest, mode):
    """KVM_SET_MSRS of IA32_TSC (api.rst 4.19) sets the counter the guest reads: its next RDTSC is
    the value written plus under a second of ticks (the value is the current TSC + 2^52, which
    the counter cannot reach by itself)."""
    g = guest(mode, RDTSC64 + "GUEST_SYNC rax\nGUEST_DONE")
    written = g.vcpu.get_msr(MSR_IA32_TSC) + (1 << 52)
    g.vcpu.set_msr(MSR_IA32_TSC, written)
    (tsc,) = g.run_to_done()
    assert written <= tsc < written + _one_second(g.vcpu), \
        f"guest RDTSC {tsc:#x} after KVM_SET_MSRS IA32_TSC = {written:#x}"


# The guest reads its TSC twice, with a GUEST_SYNC of each reading.
TWO_READS = RDTSC64 + "GUEST_SYNC rax\n" + RDTSC64 + "GUEST_SYNC rax\nGUEST_DONE"


def _check_guest_tsc_rate(g, khz: int, what: str) -> None:
    """Run TWO_READS with the readings 0.3 s apart, each run bracketed by the host's
    CLOCK_MONOTONIC: the guest's TSC must advance by `khz` times the host's interval, to 0.1% (the
    interval lies between the inner and the outer pair of host readings)."""
    b = bracketed_pair(g.expect_sync, 0.3)
    elapsed_ns = (b.second - b.first) * 10**6 / khz
    assert b.inner_ns * 0.999 <= elapsed_ns <= b.outer_ns * 1.001, \
        f"{what}: the guest TSC advanced {b.second - b.first} ticks = {elapsed_ns:.0f} ns while the host's " \
        f"CLOCK_MONOTONIC advanced {b.inner_ns} .. {b.outer_ns} ns"
    g.run_to_done()


@pytest.mark.requires_cap("KVM_CAP_GET_TSC_KHZ")
@pytest.mark.modes(code_bits=64)
@pytest.mark.waits
def test_guest_tsc_runs_at_get_tsc_khz(guest, mode):
    """KVM_GET_TSC_KHZ "returns the tsc frequency of the guest" in kHz (api.rst KVM_GET_TSC_KHZ):
    the guest's RDTSC advances by that rate times the host's CLOCK_MONOTONIC interval between two
    readings 0.3 s apart (bracketed by the host's clock around each run), to 0.1%."""
    g = guest(mode, TWO_READS)
    khz = g.vcpu.get_tsc_khz()
    _check_guest_tsc_rate(g, khz, f"at KVM_GET_TSC_KHZ {khz} kHz")


@pytest.mark.requires_cap("KVM_CAP_TSC_CONTROL")
@pytest.mark.modes("long64")
def test_set_tsc_khz_sets_the_guest_tsc_rate(guest, mode):
    """KVM_SET_TSC_KHZ "specif[ies] the tsc frequency" of the vCPU in kHz (api.rst KVM_SET_TSC_KHZ):
    after setting 3/4 of the rate KVM_GET_TSC_KHZ first reported, KVM_GET_TSC_KHZ reads the new
    rate and the guest's TSC advances at it against the host's CLOCK_MONOTONIC, to 0.1%."""
    g = guest(mode, TWO_READS)
    khz = g.vcpu.get_tsc_khz() * 3 // 4
    g.vcpu.set_tsc_khz(khz)
    assert g.vcpu.get_tsc_khz() == khz, f"KVM_GET_TSC_KHZ after KVM_SET_TSC_KHZ {khz}: {g.vcpu.get_tsc_khz()}"
    _check_guest_tsc_rate(g, khz, f"after KVM_SET_TSC_KHZ {khz}")


@pytest.mark.requires_cap("KVM_CAP_VCPU_ATTRIBUTES")
def test_tsc_offset_follows_a_guest_tsc_write(guest):
    """The guest's WRMSR of IA32_TSC = V changes the vCPU's TSC offset, for which
    "guest_tsc = host_tsc + KVM_VCPU_TSC_OFFSET" holds (devices/vcpu.rst): KVM_GET_DEVICE_ATTR
    afterwards reads V minus the host's TSC at the write, which lies between kvmtest's own RDTSC
    before and after the KVM_RUN that made it."""
    g = guest("long64", f"""
        mov ecx, {MSR_IA32_TSC:#x}
        mov rax, rbx
        mov rdx, rbx
        shr rdx, 32
        wrmsr
        GUEST_SYNC 0
        GUEST_DONE""")
    if not g.vcpu.has_device_attr(C.KVM_VCPU_TSC_CTRL, C.KVM_VCPU_TSC_OFFSET):
        pytest.skip("KVM_HAS_DEVICE_ATTR: no KVM_VCPU_TSC_OFFSET on this vCPU")
    written = host_cpu.rdtsc() + (1 << 50)
    regs = g.vcpu.get_regs()
    regs.rbx = written
    g.vcpu.set_regs(regs)
    h0 = host_cpu.rdtsc()
    assert g.expect_sync() == 0
    h1 = host_cpu.rdtsc()
    offset = g.vcpu.get_device_attr_u64(C.KVM_VCPU_TSC_CTRL, C.KVM_VCPU_TSC_OFFSET)
    assert (written - h1) & MASK64 <= offset <= (written - h0) & MASK64, \
        f"KVM_VCPU_TSC_OFFSET {offset:#x} after the guest wrote IA32_TSC = {written:#x}; the host's TSC was " \
        f"{h0:#x} .. {h1:#x} around the write, so the offset should be {(written - h1) & MASK64:#x} .. " \
        f"{(written - h0) & MASK64:#x}"
    g.run_to_done()


@pytest.mark.modes(code_bits=64)
def test_tsc_keeps_counting_across_migration(guest, mode):
    """The TSC only counts up (SDM Vol. 3B 18.17: it "increments"), and migration is invisible
    to the guest: after Guest.migrate() (kvmtest.vm_state saves IA32_TSC with KVM_GET_MSRS and
    restores it with KVM_SET_MSRS in the new VM, api.rst 4.18/4.19) the guest's RDTSC is not below
    the one before, and ahead of it by no more than the host's CLOCK_MONOTONIC interval around
    both at the KVM_GET_TSC_KHZ rate (plus 1% and 1 ms)."""
    g = guest(mode, TWO_READS)
    khz = g.vcpu.get_tsc_khz()
    t0 = time.monotonic_ns()
    before = g.expect_sync()
    g.migrate()
    after = g.expect_sync()
    t1 = time.monotonic_ns()
    most = ((t1 - t0) * 1.01 + 1_000_000) * khz / 10**6
    assert 0 <= after - before <= most, \
        f"guest TSC {before:#x} before the migration and {after:#x} after it ({after - before} ticks); the host " \
        f"spent {t1 - t0} ns, at most {most:.0f} ticks at {khz} kHz"
    g.run_to_done()
