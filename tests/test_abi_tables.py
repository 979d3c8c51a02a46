"""The ABI layer's names and tables agree, and its variable-length builders refuse bad entries by
name (no /dev/kvm needed)."""

import ast
import ctypes
import pathlib

import pytest

from kvmtest.abi import buffers as B
from kvmtest.abi import capabilities, constants, numbers
from kvmtest.abi import structs as S
from kvmtest.errors import BadArgumentError

ABI = pathlib.Path(constants.__file__).parent


def _assigned_names(path: pathlib.Path) -> set[str]:
    """Module-level names the file itself assigns (what a reader and a type checker see)."""
    names = set()
    for node in ast.parse(path.read_text()).body:
        targets = (node.targets if isinstance(node, ast.Assign)
                   else [node.target] if isinstance(node, ast.AnnAssign) else [])
        for t in targets:
            for n in ast.walk(t):
                if isinstance(n, ast.Name):
                    names.add(n.id)
    return names


@pytest.mark.parametrize("table, module", [
    ("EXIT_REASONS", constants), ("INTERNAL_ERROR_SUBERRORS", constants), ("SYSTEM_EVENTS", constants),
    ("MSR_EXIT_REASONS", constants), ("MP_STATES", constants), ("STATS_TYPES", constants),
    ("CAPABILITIES", capabilities),
])
def test_every_table_entry_is_a_name_the_module_writes_out(table, module):
    written = _assigned_names(pathlib.Path(module.__file__))
    entries = getattr(module, table)
    assert entries, f"{table} is empty"
    missing = [name for name in entries if name not in written]
    assert not missing, f"{table} names not written out in {module.__name__}: {missing}"
    wrong = [name for name, value in entries.items() if getattr(module, name) != value]
    assert not wrong, f"{table} disagrees with the module-level names: {wrong}"


def test_tables_hold_no_neighbouring_constants():
    """Constants that share a prefix with a table but are not its members stay out of it."""
    assert "KVM_EXIT_IO_IN" not in constants.EXIT_REASONS and "KVM_EXIT_IO_OUT" not in constants.EXIT_REASONS
    assert "KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES" not in constants.INTERNAL_ERROR_SUBERRORS
    assert set(constants.STATS_TYPES) == {"KVM_STATS_TYPE_CUMULATIVE", "KVM_STATS_TYPE_INSTANT", "KVM_STATS_TYPE_PEAK",
                                          "KVM_STATS_TYPE_LINEAR_HIST", "KVM_STATS_TYPE_LOG_HIST"}
    assert constants.EXIT_REASON_NAMES.name(2) == "KVM_EXIT_IO"  # IO_OUT (1) did not replace EXCEPTION's name
    assert constants.EXIT_REASON_NAMES.name(1) == "KVM_EXIT_EXCEPTION"


def test_no_abi_module_publishes_names_at_run_time():
    for path in ABI.rglob("*.py"):
        text = path.read_text()
        assert "globals().update" not in text and "globals()[" not in text, f"{path.name} sets names at run time"


def test_every_ioctl_number_is_a_written_out_name():
    written = _assigned_names(pathlib.Path(numbers.__file__))
    assert set(numbers.IOCTLS) <= written
    assert all(getattr(numbers, name) == d.request for name, d in numbers.IOCTLS.items())


def test_ioctl_scopes_are_known_fd_kinds_with_known_capabilities():
    for d in numbers.IOCTLS.values():
        assert d.scopes <= set(numbers.SCOPES), d
        for scope in d.scopes:
            cap = d.capability_on(scope)
            assert cap is None or cap in capabilities.CAPABILITIES, f"{d.name} on {scope}: unknown {cap}"
    enable = numbers.IOCTLS["KVM_ENABLE_CAP"]
    assert enable.capability_on("vcpu") == "KVM_CAP_ENABLE_CAP"
    assert enable.capability_on("vm") == "KVM_CAP_ENABLE_CAP_VM"
    assert numbers.IOCTLS["KVM_GET_REGS"].scopes == {"vcpu"}


def test_msrs_buffer_holds_its_entries():
    buf = B.msrs_buffer({0x174: 0x10, 0xC0000080: 0x500})
    assert buf.nmsrs == 2 and ctypes.sizeof(buf) == ctypes.sizeof(S.kvm_msrs) + 2 * ctypes.sizeof(S.kvm_msr_entry)
    assert [(e.index, e.data) for e in buf.entries] == [(0x174, 0x10), (0xC0000080, 0x500)]
    assert [(e.index, e.data) for e in B.msrs_buffer([0x10, 0x11]).entries] == [(0x10, 0), (0x11, 0)]


@pytest.mark.parametrize("entries, problem", [
    ({1 << 32: 0}, r"KVM_SET_MSRS index = 0x100000000: outside the 32-bit field"),
    ({0x174: 1 << 64}, r"KVM_SET_MSRS value of MSR 0x174 = 0x10000000000000000"),
    ({0x174: -1}, r"KVM_SET_MSRS value of MSR 0x174 = -0x1"),
    (None, r"KVM_SET_MSRS index: expected a list of integers, got None"),
    ("174", r"KVM_SET_MSRS index: expected a list of integers, got '174'"),
])
def test_msrs_buffer_names_the_bad_entry(entries, problem):
    with pytest.raises(BadArgumentError, match=problem):
        B.msrs_buffer(entries, what="vm0/vcpu0 KVM_SET_MSRS")


def test_cpuid2_buffer_copies_entries_and_sizes_for_reads():
    entry = S.kvm_cpuid_entry2(function=7, index=1, eax=0xAB)
    buf = B.cpuid2_buffer([entry])
    entry.eax = 0  # a copy: later edits of the caller's entry do not reach the buffer
    assert buf.nent == 1 and (buf.entries[0].function, buf.entries[0].index, buf.entries[0].eax) == (7, 1, 0xAB)
    room = B.cpuid2_buffer(nent=5)
    assert room.nent == 5 and len(room.entries) == 5
    many = [S.kvm_cpuid_entry2(function=f, index=f + 1, flags=1, eax=f << 8, edx=~f & 0xFFFFFFFF) for f in range(3)]
    buf = B.cpuid2_buffer(many, nent=4)  # each in its place, the room after them zero
    assert [bytes(buf.entries[i]) for i in range(4)] == [bytes(e) for e in many] + [bytes(S.kvm_cpuid_entry2())]


@pytest.mark.parametrize("call, problem", [
    (lambda: B.cpuid2_buffer(None), r"kvm_cpuid2: expected a list of kvm_cpuid_entry2, got None"),
    (lambda: B.cpuid2_buffer(S.kvm_cpuid_entry2()), r"kvm_cpuid2: expected a list of kvm_cpuid_entry2"),
    (lambda: B.cpuid2_buffer([S.kvm_cpuid_entry2(), 5]), r"kvm_cpuid2 entry 1: expected a kvm_cpuid_entry2, got 5"),
    (lambda: B.cpuid2_buffer([S.kvm_cpuid_entry2()] * 3, nent=2), r"3 entries do not fit nent = 2"),
    (lambda: B.cpuid2_buffer(nent=-1), r"kvm_cpuid2 nent = -0x1: outside 0x0 to 0xffffffff"),
    (lambda: B.msr_list_buffer(4, room=2), r"nmsrs = 4 claims more indices than the 2 the buffer holds"),
    (lambda: B.irq_routing_buffer([1]), r"kvm_irq_routing entry 0: expected a kvm_irq_routing_entry"),
    (lambda: B.nested_state_buffer(1 << 32), r"kvm_nested_state size = 0x100000000"),
])
def test_builders_refuse_by_name(call, problem):
    with pytest.raises(BadArgumentError, match=problem):
        call()


def test_msr_list_buffer_may_claim_less_room_than_it_has():
    buf = B.msr_list_buffer(0, room=4)
    assert buf.nmsrs == 0 and len(buf.indices) == 4


def test_variable_length_types_are_cached():
    """One class per size, not one per call: a long run does not grow memory."""
    assert S.msrs_type(3) is S.msrs_type(3) and S.cpuid2_type(9) is S.cpuid2_type(9)
