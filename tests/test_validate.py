"""The shared argument checks (kvmtest.validate) and the checks in front of the ioctl choke point
refuse bad input with one BadArgumentError naming the value, never a ctypes TypeError or a plain
KeyError/ValueError, and never by wrapping it into a field. (No KVM needed.)"""

import ctypes
import re

import pytest

from kvmtest import ioctl, validate
from kvmtest.abi import structs as S
from kvmtest.errors import BadArgumentError
from kvmtest.guest.builder import _user_symbols
from kvmtest.kvm import Kvm, cap_number


@pytest.mark.parametrize("value, problem", [
    (-1, "IDT vector = -1: outside 0 to 255"), (256, "IDT vector = 256: outside 0 to 255"),
    (True, "IDT vector = True: not an integer"), (None, "IDT vector = None: not an integer"),
    (3.0, "IDT vector = 3.0: not an integer"),
])
def test_int_in_names_the_value_and_the_limits(value, problem):
    with pytest.raises(BadArgumentError) as info:
        validate.int_in(value, 0, 255, "IDT vector")
    assert str(info.value) == problem


def test_int_in_gives_wide_limits_in_hex():
    with pytest.raises(BadArgumentError, match=r"^rip = 0x100000000: outside 0x0 to 0xffffffff$"):
        validate.int_in(1 << 32, 0, (1 << 32) - 1, "rip")
    assert validate.int_in(255, 0, 255, "v") == 255


@pytest.mark.parametrize("values", [None, "abc", b"ab", {1: 2}, 5])
def test_uints_wants_a_list_of_integers(values):
    with pytest.raises(BadArgumentError, match=r"^MSR index: expected a list of integers, got "):
        validate.uints(values, 32, "MSR index")


def test_uints_names_the_first_bad_entry():
    with pytest.raises(BadArgumentError, match=r"^dr\[1\] = 0x10000000000000000: outside the 64-bit field"):
        validate.uints([0, 1 << 64, -1], 64, "dr", indexed=True)
    assert validate.uints((i for i in (1, 2)), 8, "x") == [1, 2]


def test_mapping_instance_and_data_name_what_they_wanted():
    with pytest.raises(BadArgumentError, match=r"^msrs: expected a dict, got \[1, 2\]$"):
        validate.mapping([1, 2], "msrs")
    with pytest.raises(BadArgumentError, match=r"^vcpu0 KVM_SET_REGS: expected a kvm_regs, got None$"):
        validate.instance(None, S.kvm_regs, "vcpu0 KVM_SET_REGS")
    with pytest.raises(BadArgumentError, match=r"expected a kvm_xsave or kvm_fpu, got kvm_regs\("):
        validate.instance(S.kvm_regs(), (S.kvm_xsave, S.kvm_fpu), "x")
    for bad in ("ab", 3, None):
        with pytest.raises(BadArgumentError, match=r"^write: expected bytes, got "):
            validate.data(bad, "write")
    assert validate.data((ctypes.c_uint8 * 2)(1, 2), "w") == b"\x01\x02"


@pytest.mark.parametrize("arg, problem", [
    ("1", r"KVM_CREATE_VCPU on vm9: argument '1': expected an integer or a UAPI struct"),
    (1 << 64, r"KVM_CREATE_VCPU on vm9: argument 0x10000000000000000 does not fit the ioctl's unsigned long"),
    ([1], r"KVM_CREATE_VCPU on vm9: argument \[1\]: expected an integer or a UAPI struct"),
])
def test_ioctl_argument_that_ctypes_cannot_pass_is_named(arg, problem):
    """Refused before the system call: fd -1 is never reached (it would be EBADF)."""
    with pytest.raises(BadArgumentError, match=problem):
        ioctl.try_ioctl(-1, "KVM_CREATE_VCPU", arg, obj="vm9")


def test_ioctl_request_that_is_no_ioctl_is_named():
    with pytest.raises(BadArgumentError, match=r"unknown ioctl name 'KVM_NOPE'"):
        ioctl.try_ioctl(-1, "KVM_NOPE")
    with pytest.raises(BadArgumentError, match=r"ioctl request None: expected a KVM ioctl name"):
        ioctl.try_ioctl(-1, None)


@pytest.mark.parametrize("path", [None, 3, ["/dev/kvm"]])
def test_kvm_device_path_that_is_no_path(path):
    with pytest.raises(BadArgumentError, match=re.escape(f"KVM device path = {path!r}: expected a path")):
        Kvm(path)


@pytest.mark.parametrize("cap, problem", [(None, "capability None: expected a KVM_CAP_"),
                                          ("NOPE", "unknown capability 'NOPE'"),
                                          (-1, "capability number = -0x1: outside the 32-bit field")])
def test_capability_that_is_no_capability(cap, problem):
    with pytest.raises(BadArgumentError, match=problem):
        cap_number(cap)


@pytest.mark.parametrize("symbols, problem", [
    ({"x": "y"}, r"Guest 'g' symbol x = 'y': not an integer"),
    ({"x": 1 << 64}, r"Guest 'g' symbol x = 0x10000000000000000: outside"),
    ({1: 2}, r"Guest 'g' symbols: name 1 is not a symbol name"),
    ([("x", 1)], r"Guest 'g' symbols: expected a dict"),
])
def test_guest_symbols_map_names_to_integers(symbols, problem):
    with pytest.raises(BadArgumentError, match=problem):
        _user_symbols(symbols, "g")
    assert _user_symbols({"x": -1, "y": (1 << 64) - 1}, "g") == {"x": -1, "y": (1 << 64) - 1}
