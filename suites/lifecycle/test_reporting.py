"""What a failing check tells its reader, on a real KVM host: the guest's state, the last ioctls
and exits, and markers that skip with the missing capability named."""

import pytest


@pytest.fixture
def inner(pytester, monkeypatch):
    for var in ("KVMTEST_GUEST_TIMEOUT", "KVMTEST_DEVICE", "KVMTEST_KNOWN_ISSUES", "KVMTEST_MODES"):
        monkeypatch.delenv(var, raising=False)
    return pytester


def test_failure_report_carries_guest_state_and_trace(kvm, inner):
    """A failing test's report has a section per guest with mode and registers, and the trace of
    recent ioctls and exits."""
    inner.makepyfile("""
        def test_g(guest):
            g = guest("long64", "mov rax, 0x1234\\nout 0x10, al\\nGUEST_DONE")
            g.run()
            assert False, "deliberate"
    """)
    result = inner.runpytest("-rf", "-p", "no:cacheprovider")
    result.stdout.fnmatch_lines(["*guest test_g (long64)*", "*guest state (mode long64*rax=0x1234*",
                                 "*kvmtest trace*", "*KVM_EXIT_IO(out port=0x10*"])


def test_requires_cap_skips_naming_the_value(kvm, inner):
    """requires_cap skips with the capability, the minimum and what KVM_CHECK_EXTENSION said."""
    inner.makepyfile("""
        import pytest
        @pytest.mark.requires_cap("KVM_CAP_NR_VCPUS", 1 << 40)
        def test_c():
            pass
    """)
    result = inner.runpytest("-rs", "-p", "no:cacheprovider")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*needs KVM_CAP_NR_VCPUS >= 1099511627776; KVM_CHECK_EXTENSION reports*"])


def test_dirty_ring_without_enabling_it_is_one_clear_error(vm):
    """Asking a vCPU for its dirty ring when the VM never enabled one names the fix instead of
    failing on None (kvmtest's own contract, not KVM's)."""
    from kvmtest.errors import KvmtestError

    vcpu = vm.create_vcpu()
    with pytest.raises(KvmtestError, match=r"enable_dirty_ring\(size\) before the VM's first vCPU"):
        _ = vcpu.dirty_ring  # the property raises


def test_irqfd_with_something_that_is_no_fd_is_one_clear_error(vm):
    """Passing an irqfd or ioeventfd something that is neither an EventFd nor an fd number names
    the ioctl and what was passed, before any ioctl is issued (kvmtest's own contract)."""
    from kvmtest.errors import KvmtestError

    with pytest.raises(KvmtestError, match=r"KVM_IRQFD: expected an EventFd or an fd number, got 'x'"):
        vm.assign_irqfd("x", 3)
    with pytest.raises(KvmtestError, match=r"KVM_IOEVENTFD: expected an EventFd or an fd number, got None"):
        vm.assign_ioeventfd(None, 0x70, 1, pio=True)


def test_msr_filter_range_of_the_wrong_shape_is_one_clear_error(vm):
    """A KVM_X86_SET_MSR_FILTER range that is not (flags, first MSR, allowed list) is named in
    one KvmtestError before any ioctl (kvmtest's own contract)."""
    from kvmtest.errors import KvmtestError

    with pytest.raises(KvmtestError, match=r"range 0: expected \(flags, first MSR, \[allowed per MSR\]\)"):
        vm.set_msr_filter([(1, 0x174)])
