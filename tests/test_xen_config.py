"""kvm_xen_hvm_config as Vm.configure_xen_hvm builds it (api.rst 4.28): each field within its width,
and nothing that is not an integer taken for one (no KVM needed)."""

import pytest

from kvmtest.abi import constants as C
from kvmtest.errors import BadArgumentError
from kvmtest.vm_xen import xen_hvm_config_struct


def test_fields_and_the_text_for_messages():
    arg, text = xen_hvm_config_struct(C.KVM_XEN_HVM_CONFIG_INTERCEPT_HCALL, 0x40000200, 0, 0, 0, 0)
    assert (arg.flags, arg.msr, arg.blob_size_64) == (2, 0x40000200, 0)
    assert text == "flags=0x2 msr=0x40000200"
    _, text = xen_hvm_config_struct(0, 0, 0x1000, 0, 1, 0)
    assert text == "flags=0x0 msr=0x0 blob_addr_32=0x1000 blob_addr_64=0x0 blob_size_32=1 blob_size_64=0"


@pytest.mark.parametrize("index, value, problem", [
    (0, True, "KVM_XEN_HVM_CONFIG flags = True: expected an integer, not a bool"),
    (1, False, "KVM_XEN_HVM_CONFIG msr = False: expected an integer, not a bool"),
    (1, 1 << 32, "KVM_XEN_HVM_CONFIG msr"),
    (4, 256, "KVM_XEN_HVM_CONFIG blob_size_32"),
    (2, -1, "KVM_XEN_HVM_CONFIG blob_addr_32"),
    (3, "0x1000", "KVM_XEN_HVM_CONFIG blob_addr_64"),
])
def test_bad_fields_are_refused_by_name(index, value, problem):
    fields = [0, 0, 0, 0, 0, 0]
    fields[index] = value
    with pytest.raises(BadArgumentError, match=problem.replace("(", r"\(")):
        xen_hvm_config_struct(*fields)
