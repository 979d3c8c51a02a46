"""KVM_CREATE_VCPU limits and KVM_CAP_MAX_VCPU_ID (api.rst 4.7, 7.x KVM_CAP_MAX_VCPU_ID)."""

import errno
import resource

import pytest

from kvmtest.abi.constants import errno_name


def test_vcpu_id_at_the_limit_is_einval_and_one_below_works(kvm, vm):
    """vCPU ids lie in [0, max_vcpu_id) (api.rst 4.7): KVM_CAP_MAX_VCPU_ID itself and 65537
    are refused with EINVAL, KVM_CAP_MAX_VCPU_ID - 1 is accepted."""
    max_id = kvm.check_extension("KVM_CAP_MAX_VCPU_ID")
    for bad in (max_id, 65537):
        err = vm.try_create_vcpu(bad)
        assert err == errno.EINVAL, f"KVM_CREATE_VCPU id={bad}: expected EINVAL, got {errno_name(err)}"
    assert vm.create_vcpu(max_id - 1).id == max_id - 1


def test_duplicate_vcpu_id_is_eexist(vm):
    """Two vCPUs cannot share an id: the second KVM_CREATE_VCPU fails with EEXIST."""
    vm.create_vcpu(5)
    err = vm.try_create_vcpu(5)
    assert err == errno.EEXIST, f"second KVM_CREATE_VCPU id=5: expected EEXIST, got {errno_name(err)}"


def test_max_vcpus_can_be_created_at_both_ends_of_the_id_range(kvm):
    """KVM_CAP_MAX_VCPUS vCPUs can be created (api.rst 4.7), with ids from the bottom and
    from the top of [0, KVM_CAP_MAX_VCPU_ID); one more is refused."""
    n = kvm.check_extension("KVM_CAP_MAX_VCPUS")
    max_id = kvm.check_extension("KVM_CAP_MAX_VCPU_ID")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < n + 64:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} is below the {n} vCPU fds needed")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, n + 64), hard))
    try:
        for ids in (range(n), range(max_id - n, max_id)):
            with kvm.create_vm() as vm:
                for i in ids:
                    vm.create_vcpu(i)
                extra = next(i for i in range(max_id) if i not in ids)
                err = vm.try_create_vcpu(extra)
                assert err == errno.EINVAL, (f"vCPU number {n + 1} (id {extra}): expected EINVAL, "
                                             f"got {errno_name(err)}")
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.mark.requires_cap("KVM_CAP_MAX_VCPU_ID")
def test_enable_max_vcpu_id_rules(kvm, vm):
    """KVM_ENABLE_CAP(KVM_CAP_MAX_VCPU_ID): above the supported maximum is EINVAL; a value can
    be set once (setting another afterwards is EINVAL) and then bounds KVM_CREATE_VCPU
    (api.rst 7, KVM_CAP_MAX_VCPU_ID; selftests max_vcpuid_cap_test)."""
    max_id = kvm.check_extension("KVM_CAP_MAX_VCPU_ID")
    err = vm.try_enable_cap("KVM_CAP_MAX_VCPU_ID", max_id + 1)
    assert err == errno.EINVAL, f"MAX_VCPU_ID={max_id + 1}: expected EINVAL, got {errno_name(err)}"
    vm.enable_cap("KVM_CAP_MAX_VCPU_ID", 2)
    err = vm.try_enable_cap("KVM_CAP_MAX_VCPU_ID", 3)
    assert err == errno.EINVAL, f"second MAX_VCPU_ID (3 after 2): expected EINVAL, got {errno_name(err)}"
    err = vm.try_create_vcpu(2)
    assert err == errno.EINVAL, f"KVM_CREATE_VCPU id=2 with MAX_VCPU_ID=2: expected EINVAL, got {errno_name(err)}"
    vm.create_vcpu(1)
