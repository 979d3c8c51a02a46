"""Opening the device (the errors a user sees) and the fingerprint's shape, without KVM."""

import errno
import os

import pytest

from kvmtest import fingerprint as fp
from kvmtest.errors import DeviceError
from kvmtest.kvm import open_device


def test_missing_device_says_is_kvm_loaded(tmp_path):
    with pytest.raises(DeviceError, match=r"^no .*/nothing \(is KVM loaded\?\)$"):
        open_device(str(tmp_path / "nothing"))


def test_permission_denied_names_the_permission(tmp_path, monkeypatch):
    dev = tmp_path / "kvm"
    dev.write_text("")
    dev.chmod(0o600)

    def deny(path, flags):
        raise PermissionError(errno.EACCES, "Permission denied", path)

    monkeypatch.setattr(os, "open", deny)
    with pytest.raises(DeviceError, match=r"permission denied: kvmtest needs read and write access \(mode 0o600"):
        open_device(str(dev))


def test_fingerprint_without_kvm_has_every_section_and_says_why(tmp_path):
    result = fp.collect(str(tmp_path / "no-kvm"))
    assert {"host", "kernel", "cpu", "modules", "backend", "mmu", "versions", "kvm"} <= set(result)
    assert result["kvm"] is None and "is KVM loaded" in result["kvm_error"]
    assert "KVM unavailable" in fp.short(result)
    assert {"kvmtest", "pytest", "keystone", "python"} <= set(result["versions"])


CPUINFO = """processor	: 0
vendor_id	: GenuineIntel
cpu family	: 6
model		: 143
model name	: Intel(R) Xeon(R) Platinum 8480+
stepping	: 8
flags		: fpu vme vmx ept hypervisor la57 pku

processor	: 1
"""


def test_cpu_info_parses_the_first_cpu():
    info = fp.cpu_info(CPUINFO)
    assert (info["vendor"], info["family"], info["model"], info["stepping"]) == ("GenuineIntel", 6, 143, 8)
    assert info["flags"]["vmx"] and info["flags"]["ept"] and not info["flags"]["svm"]


@pytest.mark.parametrize("modules,mode", [
    ({"kvm": {"tdp_mmu": "Y"}, "kvm_intel": {"ept": "Y"}}, "ept-tdp-mmu"),
    ({"kvm": {"tdp_mmu": "N"}, "kvm_intel": {"ept": "Y"}}, "ept"),
    ({"kvm": {}, "kvm_intel": {"ept": "N"}}, "shadow"),
    ({"kvm": {"tdp_mmu": "Y"}, "kvm_amd": {"npt": "1"}}, "npt-tdp-mmu"),
    ({"kvm": {}, "kvm_amd": {"npt": "0"}}, "shadow"),
    ({"kvm": {}, "kvm_pvm": {}}, "shadow"),
    ({}, "unknown"),
])
def test_mmu_mode_from_module_parameters(modules, mode):
    assert fp.mmu_mode(modules)["mode"] == mode


def test_flat_properties_are_prefixed_strings():
    props = fp.flat_properties({"host": "h", "kernel": {"release": "6.1"}, "modules": {"kvm": {"tdp_mmu": "Y"}}})
    assert props == {"kvmtest.host": "h", "kvmtest.kernel.release": "6.1", "kvmtest.module.kvm.tdp_mmu": "Y",
                     "kvmtest.build": "6.1 ?"}


def test_build_id_names_release_build_line_and_module_srcversions():
    host = {"kernel": {"release": "6.1.0-9-amd64", "version": "#1 SMP PREEMPT_DYNAMIC Debian 6.1.27-1"},
            "module_versions": {"kvm_amd": "ABC123", "kvm": "DEF456"}}
    assert fp.build_id(host) == "6.1.0-9-amd64 #1 SMP PREEMPT_DYNAMIC Debian 6.1.27-1 kvm:DEF456 kvm_amd:ABC123"


def test_cpuid_hash_leaves_out_the_fields_that_name_the_current_cpu():
    from kvmtest.abi import structs as S

    on_cpu0 = S.kvm_cpuid_entry2(function=1, ebx=0x00_10_08_00, ecx=0x80000000)
    on_cpu1 = S.kvm_cpuid_entry2(function=1, ebx=0x01_10_08_00, ecx=0x80000000)
    assert fp.cpuid_entry_identity(on_cpu0) == fp.cpuid_entry_identity(on_cpu1)
    other_feature = S.kvm_cpuid_entry2(function=1, ebx=0x00_10_08_00, ecx=0x80000001)
    assert fp.cpuid_entry_identity(on_cpu0) != fp.cpuid_entry_identity(other_feature)
    x2apic = [S.kvm_cpuid_entry2(function=0xB, index=0, edx=n, ebx=2) for n in (0, 3)]
    assert fp.cpuid_entry_identity(x2apic[0]) == fp.cpuid_entry_identity(x2apic[1])
