"""Vm methods refuse a value that does not fit its UAPI field, or a memslot that does not exist,
with one error naming it, before any ioctl.

ctypes stores 2**64 in a __u64 as 0 and -1 as all ones, so each of these used to reach KVM as
another value (a zone at 2**64 - 1, a datamatch of 0) or be written into guest memory wrapped;
a missing memslot was a bare KeyError. Field widths from api.rst 4.35 (kvm_userspace_memory_region),
4.8 and 4.117 (dirty logs), 4.25 (kvm_irq_level), KVM_IRQFD, KVM_IOEVENTFD,
KVM_REGISTER_COALESCED_MMIO, KVM_X86_SET_MSR_FILTER, 4.36 and 4.40 (TSS and identity map).
"""

import pytest

from kvmtest.abi.constants import KVM_MSR_FILTER_READ
from kvmtest.errors import BadArgumentError, GuestMemoryError
from kvmtest.eventfd import EventFd

ZONE = 0x50000000  # an unbacked guest physical address


@pytest.fixture
def efd():
    with EventFd() as e:
        yield e


@pytest.mark.parametrize("call", ["delete_memslot", "move_memslot", "set_memslot_flags", "get_dirty_log"])
def test_memslot_that_does_not_exist(vm_with_memory, call):
    """Deleting, moving, reflagging or reading the dirty log of a slot the VM lacks (api.rst 4.35,
    4.8) is a GuestMemoryError naming the VM and its memslots, not a KeyError; slot 0 stays."""
    args = {"delete_memslot": (99,), "move_memslot": (99, 0x400000), "set_memslot_flags": (99, 0),
            "get_dirty_log": (99,)}[call]
    with pytest.raises(GuestMemoryError, match=r"vm\d+ has no memslot 99 \(memslots: 0 at 0x0-0x200000\)"):
        getattr(vm_with_memory, call)(*args)
    assert list(vm_with_memory.memslots) == [0]


@pytest.mark.parametrize("write, value, bits", [("write_u64", 1 << 64, 64), ("write_u64", -1, 64),
                                                ("write_u32", 1 << 32, 32), ("write_u32", -1, 32)])
def test_guest_memory_value_wider_than_the_write(vm_with_memory, write, value, bits):
    """write_u64/write_u32 of a value outside 64/32 bits is one BadArgumentError naming the width,
    and guest memory keeps its bytes instead of taking the wrapped value."""
    vm_with_memory.write(0x100, b"\x5a" * 8)
    with pytest.raises(BadArgumentError, match=rf"{write} value = {value:#x}: outside the {bits}-bit field"):
        getattr(vm_with_memory, write)(0x100, value)
    assert vm_with_memory.read(0x100, 8) == b"\x5a" * 8, f"{write}({value:#x}) changed guest memory"


@pytest.mark.parametrize("call, problem", [
    (lambda vm: vm.write(0x100, "ab"), r"write at guest address 0x100: expected bytes, got 'ab'"),
    (lambda vm: vm.write(0x100, None), r"write at guest address 0x100: expected bytes, got None"),
    (lambda vm: vm.read("0x100", 4), r"guest physical address = '0x100': not an integer"),
    (lambda vm: vm.read(0x100, "4"), r"length '4' at guest address 0x100: not an integer"),
    (lambda vm: vm.hva(-1), r"guest physical address = -0x1: outside the 64-bit field"),
], ids=["str-data", "none-data", "str-gpa", "str-length", "negative-gpa"])
def test_guest_memory_access_with_a_wrong_type(vm_with_memory, call, problem):
    """Guest memory access with non-bytes data, a non-integer GPA or length, or a GPA below 0
    (guest_phys_addr is a __u64, api.rst 4.35) is one BadArgumentError naming it."""
    with pytest.raises(BadArgumentError, match=problem):
        call(vm_with_memory)


@pytest.mark.parametrize("field, args", [
    ("slot", (1 << 32, 0, 0x400000, 0x1000, 0)), ("flags", (1, -1, 0x400000, 0x1000, 0)),
    ("guest_phys_addr", (1, 0, -0x1000, 0x1000, 0)), ("memory_size", (1, 0, 0x400000, 1 << 64, 0)),
])
def test_memslot_field_outside_its_width(vm, field, args):
    """Slot 2**32 would be slot 0 to KVM, gpa -0x1000 would be 0xffff...f000."""
    with pytest.raises(BadArgumentError, match=rf"KVM_SET_USER_MEMORY_REGION {field} = "):
        vm.try_set_user_memory_region(*args)
    with pytest.raises(BadArgumentError, match=rf"KVM_SET_USER_MEMORY_REGION {field} = "):
        vm.set_user_memory_region(*args)


def test_add_memory_slot_outside_u32_leaves_no_slot(vm):
    """kvm_userspace_memory_region.slot is a __u32 (api.rst 4.35): add_memory(slot=2**32) is
    refused by name, not made slot 0, and no memslot is recorded."""
    with pytest.raises(BadArgumentError, match=r"memslot slot = 0x100000000"):
        vm.add_memory(0x400000, 0x1000, slot=1 << 32)
    assert vm.memslots == {}


def test_clear_dirty_log_pages_outside_the_range(vm_with_memory):
    """A page below first_page would set a bit before the bitmap (a negative index)."""
    with pytest.raises(BadArgumentError,
                       match=r"KVM_CLEAR_DIRTY_LOG: page 3 lies outside first_page 64 \+ num_pages 64"):
        vm_with_memory.try_clear_dirty_log(0, 64, 64, {3})
    with pytest.raises(BadArgumentError, match=r"KVM_CLEAR_DIRTY_LOG num_pages = -0x1"):
        vm_with_memory.try_clear_dirty_log(0, 0, -1)


@pytest.mark.parametrize("call, problem", [
    (lambda vm: vm.set_tss_addr(1 << 64), r"KVM_SET_TSS_ADDR addr = 0x10000000000000000"),
    (lambda vm: vm.set_tss_addr(-1), r"KVM_SET_TSS_ADDR addr = -0x1"),
    (lambda vm: vm.set_identity_map_addr(-0x1000), r"KVM_SET_IDENTITY_MAP_ADDR addr = -0x1000"),
    (lambda vm: vm.register_coalesced_mmio(-1, 4), r"KVM_REGISTER_COALESCED_MMIO addr = -0x1"),
    (lambda vm: vm.register_coalesced_mmio(ZONE, -1), r"KVM_REGISTER_COALESCED_MMIO size = -0x1"),
    (lambda vm: vm.register_coalesced_mmio(ZONE, 1 << 32), r"KVM_REGISTER_COALESCED_MMIO size = 0x100000000"),
    (lambda vm: vm.unregister_coalesced_mmio(ZONE, -4), r"KVM_UNREGISTER_COALESCED_MMIO size = -0x4"),
    (lambda vm: vm.irq_line(-1, 1), r"KVM_IRQ_LINE_STATUS irq = -0x1"),
    (lambda vm: vm.irq_line(4, 1 << 32), r"KVM_IRQ_LINE_STATUS level = 0x100000000"),
    (lambda vm: vm.create_vcpu("1"), r"KVM_CREATE_VCPU id = '1': not an integer"),
    (lambda vm: vm.create_vcpu(-1), r"KVM_CREATE_VCPU id = -0x1"),
    (lambda vm: vm.get_irqchip(-1), r"KVM_GET_IRQCHIP chip_id = -0x1"),
    (lambda vm: vm.create_pit2(flags=1 << 32), r"KVM_CREATE_PIT2 flags = 0x100000000"),
    (lambda vm: vm.set_clock(None), r"KVM_SET_CLOCK: expected a kvm_clock_data, got None"),
    (lambda vm: vm.set_gsi_routing([1]), r"KVM_SET_GSI_ROUTING entry 0: expected a kvm_irq_routing_entry"),
    (lambda vm: vm.msi_route(1, 1 << 64, 0), r"MSI route address = 0x10000000000000000"),
], ids=["tss-2^64", "tss-neg", "identity-map-neg", "coalesced-addr", "coalesced-size-neg", "coalesced-size-2^32",
        "uncoalesced-size", "irq-neg", "level-2^32", "vcpu-id-str", "vcpu-id-neg", "irqchip-neg", "pit-flags",
        "clock-none", "gsi-route-int", "msi-address"])
def test_vm_argument_outside_its_field(vm, call, problem):
    """VM ioctl arguments outside their UAPI field or of the wrong type (api.rst 4.7, 4.25, 4.26,
    4.36, 4.40, 4.52, 4.116, KVM_CREATE_PIT2, KVM_SET_CLOCK) are refused by name before the ioctl:
    no vCPU is created and nothing is recorded for migration."""
    with pytest.raises(BadArgumentError, match=problem):
        call(vm)
    assert vm.vcpus == [] and vm.setup_calls == [], "a refused call reached KVM or was recorded for migration"


@pytest.mark.parametrize("kwargs, problem", [
    ({"datamatch": 1 << 64}, r"KVM_IOEVENTFD datamatch = 0x10000000000000000"),
    ({"datamatch": -1}, r"KVM_IOEVENTFD datamatch = -0x1"),
    ({"length": -1}, r"KVM_IOEVENTFD len = -0x1"),
    ({"addr": -1}, r"KVM_IOEVENTFD addr = -0x1"),
])
def test_ioeventfd_field_outside_its_width(vm, efd, kwargs, problem):
    """kvm_ioeventfd: datamatch and addr are __u64, len a __u32 (api.rst KVM_IOEVENTFD)."""
    args = {"addr": ZONE, "length": 4, **kwargs}
    datamatch = args.pop("datamatch", None)
    with pytest.raises(BadArgumentError, match=problem):
        vm.assign_ioeventfd(efd, args["addr"], args["length"], datamatch=datamatch)
    with pytest.raises(BadArgumentError, match=problem):
        vm.try_deassign_ioeventfd(efd, args["addr"], args["length"], datamatch=datamatch)


def test_irqfd_gsi_and_fd_outside_their_fields(vm, efd):
    """kvm_irqfd: fd and gsi are __u32 (api.rst KVM_IRQFD)."""
    vm.create_irqchip()
    with pytest.raises(BadArgumentError, match=r"KVM_IRQFD gsi = -0x1"):
        vm.assign_irqfd(efd, -1)
    with pytest.raises(BadArgumentError, match=r"KVM_IRQFD gsi = 0x100000000"):
        vm.deassign_irqfd(efd, 1 << 32)
    with pytest.raises(BadArgumentError, match=r"KVM_IRQFD fd = -0x1"):
        vm.assign_irqfd(-1, 4)
    with pytest.raises(BadArgumentError, match=r"KVM_IRQFD: expected an EventFd or an fd number, got 'x'"):
        vm.assign_irqfd("x", 4)


@pytest.mark.parametrize("ranges, problem", [
    ([(KVM_MSR_FILTER_READ, -1, [True])], r"range 0 base = -0x1: outside the 32-bit field"),
    ([(1 << 32, 0, [True])], r"range 0 flags = 0x100000000"),
    (None, r"expected a list of ranges, got None"),
    ([(KVM_MSR_FILTER_READ, 0)], r"range 0: expected \(flags, first MSR, \[allowed per MSR\]\)"),
])
def test_msr_filter_range_outside_its_fields(vm, ranges, problem):
    """kvm_msr_filter_range: flags, nmsrs and base are __u32 (api.rst KVM_X86_SET_MSR_FILTER)."""
    with pytest.raises(BadArgumentError, match=problem):
        vm.set_msr_filter(ranges)
