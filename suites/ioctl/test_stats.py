"""Binary statistics file descriptors (api.rst 4.133 KVM_GET_STATS_FD)."""

import ctypes

import pytest

from kvmtest.abi import constants as C
from kvmtest.abi.structs import kvm_stats_desc, kvm_stats_header
from kvmtest.exits import HltExit, IoExit, MmioExit

pytestmark = pytest.mark.requires_cap("KVM_CAP_BINARY_STATS_FD")


@pytest.fixture(params=["vm", "vcpu"])
def stats(request, vm):
    owner = vm if request.param == "vm" else vm.create_vcpu()
    with owner.stats() as s:
        yield request.param, s


def test_header_layout(stats):
    """The header's id, descriptors and data blocks come after the header and do not overlap;
    name_size is KVM_STATS_NAME_SIZE; the id starts with "kvm-" (api.rst 4.133)."""
    kind, s = stats
    h = s.header
    desc_size = ctypes.sizeof(kvm_stats_desc) + h.name_size
    assert h.name_size == C.KVM_STATS_NAME_SIZE, f"name_size {h.name_size}"
    assert h.id_offset >= ctypes.sizeof(kvm_stats_header)
    assert h.desc_offset >= h.id_offset + h.name_size, "descriptors overlap the id string"
    assert h.data_offset >= h.desc_offset + h.num_desc * desc_size, "data overlaps the descriptors"
    assert s.id.startswith("kvm-"), f"{kind} stats id {s.id!r} does not start with 'kvm-'"
    assert h.num_desc > 0


def test_descriptor_rules(stats):
    """Each descriptor: known type/unit/base; exponent >= 0 for counts, bytes and cycles,
    <= 0 for seconds, 0 for booleans; bucket_size only for linear histograms; size >= 1;
    data inside the data block (api.rst 4.133; selftests kvm_binary_stats_test)."""
    kind, s = stats
    problems = []
    for d in s.descriptors:
        if d.type > C.KVM_STATS_TYPE_MAX or d.unit > C.KVM_STATS_UNIT_MAX or d.base > C.KVM_STATS_BASE_MAX:
            problems.append(f"{d.name}: type/unit/base {d.type}/{d.unit}/{d.base} out of range")
        if d.unit in (0, 1, 3) and d.exponent < 0:
            problems.append(f"{d.name}: exponent {d.exponent} < 0 for unit {d.unit}")
        if d.unit == 2 and d.exponent > 0:
            problems.append(f"{d.name}: seconds with exponent {d.exponent} > 0")
        if d.unit == 4 and d.exponent != 0:
            problems.append(f"{d.name}: boolean with exponent {d.exponent}")
        if (d.bucket_size != 0) != (d.type == C.KVM_STATS_TYPE_LINEAR_HIST):
            problems.append(f"{d.name}: bucket_size {d.bucket_size} with type {d.type}")
        if d.size < 1 or not d.name:
            problems.append(f"{d.name!r}: size {d.size}")
    assert not problems, f"{kind} stats: " + "; ".join(problems)
    values = s.read()
    for d in s.descriptors:
        if d.unit == 4:
            assert values[d.name] in (0, 1), f"boolean {d.name} = {values[d.name]}"


def test_each_stat_reads_alone_as_in_bulk(stats):
    """pread of one statistic returns what the bulk read of the data block returned for it."""
    _, s = stats
    bulk = s.read()
    for d in s.descriptors:
        if d.type in (C.KVM_STATS_TYPE_CUMULATIVE, C.KVM_STATS_TYPE_PEAK) and "halt" not in d.name:
            continue  # counters may move between the two reads only if a vCPU runs; none does here
        assert s.value(d.name) == bulk[d.name], d.name


def test_vcpu_counters_move_with_the_exits(guest):
    """The vCPU's exits, mmio_exits and halt_exits counters rise by the exits the guest made
    (api.rst 4.133; arch/x86/kvm/x86.c counts them in common code: every return to user space,
    every MMIO access handed to user space, every HLT). io_exits is left out: it counts I/O
    *intercepts* in the vendor module (vmx.c handle_io, svm.c io_interception), which a host that
    emulates the OUT instead of intercepting it never takes; no document defines it further."""
    g = guest("long64", "out 0x10, al\nout 0x10, al\nmov rbx, MMIO_BASE\nmov byte ptr [rbx], 1\nhlt\nGUEST_DONE")
    with g.vcpu.stats() as s:
        before = s.read()
        g.expect_exit(IoExit)
        g.expect_exit(IoExit)
        g.expect_exit(MmioExit)
        g.expect_exit(HltExit)
        after = s.read()
    delta = {k: after[k] - before[k] for k in ("exits", "mmio_exits", "halt_exits")}
    assert delta["exits"] >= 4 and delta["mmio_exits"] == 1 and delta["halt_exits"] == 1, \
        f"counter deltas after 2 OUT, 1 MMIO write and 1 HLT exit: {delta}"
