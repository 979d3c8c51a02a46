"""kvmtest's pytest fixtures, tiered as KVM's own objects are: the system handle, a VM, a vCPU in
it, a VM with memory, and a guest factory that builds "a VM with one vCPU running this code" in
one call. Each tier closes what it made when the test ends, passed or failed.

    kvm (session) -> vm -> vcpu
                        -> vm_with_memory
    kvm (+ guest_timeout) -> guest(mode, source, ...)   (mode: from @pytest.mark.modes)

Registered by kvmtest.plugin (its pytest_addoption); in a session where the plugin is dormant the
fixtures exist but refuse to run, saying how to wake the plugin (kvmtest.options.settings).
"""

import os

import pytest

from .cpuid import FEATURES
from .errors import DeviceError
from .guest import Guest, get_mode
from .guest.paging import GiB1, KiB4
from .kvm import Kvm
from .options import settings

KVM_KEY = pytest.StashKey[Kvm]()       # the session's one /dev/kvm handle
GUESTS_KEY = pytest.StashKey[list]()   # the guests a test made, for its failure report


def session_kvm(config) -> Kvm:
    """The session's one open KVM device (per xdist worker), opened on first use and shared by the
    `kvm` fixture and the requires_cpu marker, so its supported CPUID is asked once.

    Skips the test when the device does not exist; a device that exists but cannot be opened
    read-write raises DeviceError naming the permission. close_session_kvm closes it."""
    kvm = config.stash.get(KVM_KEY, None)
    if kvm is not None and not kvm.closed:
        return kvm
    path = settings(config)["kvm_device"]
    if not os.path.exists(path):
        pytest.skip(f"no {path} (is KVM loaded?)")
    try:
        kvm = Kvm(path)
    except DeviceError as e:
        if str(e).startswith("no "):
            pytest.skip(str(e))
        raise
    config.stash[KVM_KEY] = kvm
    return kvm


def close_session_kvm(config) -> None:
    """Close the session's KVM device if it was opened (at the end of the session)."""
    kvm = config.stash.get(KVM_KEY, None)
    if kvm is not None:
        kvm.close()


@pytest.fixture(scope="session")
def kvm(pytestconfig):
    """The system handle (/dev/kvm), one per session (per xdist worker), closed at its end.

    Skips the test when the device does not exist; a device that exists but cannot be
    opened read-write is an error naming the permission.
    """
    handle = session_kvm(pytestconfig)
    yield handle
    close_session_kvm(pytestconfig)


@pytest.fixture
def vm(kvm):
    """A bare VM (KVM_CREATE_VM, api.rst 4.2): no memory, no vCPU; closed after the test."""
    with kvm.create_vm() as v:
        yield v


@pytest.fixture
def vcpu(vm):
    """vCPU 0 of the test's bare `vm` (KVM_CREATE_VCPU, api.rst 4.7), in its reset state; closed
    with the VM."""
    return vm.create_vcpu()


@pytest.fixture
def vm_with_memory(vm):
    """A VM with 2 MiB of guest memory at guest physical 0 (memslot 0)."""
    vm.add_memory(0, 0x200000, slot=0)
    return vm


@pytest.fixture
def mode(request):
    """Stands in for a missing `modes` marker: a test's `mode` argument is the CPU mode name
    @pytest.mark.modes(...) (or its own parametrize) gives it; without one, the test errors
    saying so instead of pytest's "fixture 'mode' not found"."""
    pytest.fail(f"{request.node.nodeid} takes `mode` but has no @pytest.mark.modes(...) to give it "
                f"one (e.g. @pytest.mark.modes(code_bits=64); kvmtest.guest.mode_select)", pytrace=False)


def guest_timeout_of(node, config) -> float:
    """The per-KVM_RUN timeout in seconds for test `node`: its guest_timeout marker, else
    --kvm-guest-timeout. A marker that is not one finite number of seconds above 0 raises
    InvalidTimeoutError naming the test."""
    from .validate import timeout

    marker = node.get_closest_marker("guest_timeout")
    if marker is None:
        return settings(config)["kvm_guest_timeout"]
    where = f"@pytest.mark.guest_timeout on {node.nodeid}"
    if len(marker.args) != 1 or marker.kwargs:
        from .errors import InvalidTimeoutError

        raise InvalidTimeoutError(f"{where}: takes one number of seconds, got args={marker.args!r} "
                                  f"kwargs={marker.kwargs!r}")
    return timeout(marker.args[0], where)


@pytest.fixture
def guest_timeout(request) -> float:
    """The per-KVM_RUN timeout in seconds: the guest_timeout marker, else --kvm-guest-timeout.

    A marker that is not one finite number of seconds above 0 raises InvalidTimeoutError naming
    the test."""
    return guest_timeout_of(request.node, request.config)


@pytest.fixture
def guest(kvm, request):
    """Factory: guest(mode, source, *, page_size=KiB4, **kw) -> kvmtest.guest.Guest, a VM with one
    vCPU set up in CPU mode `mode` to run the assembly `source` (see Guest for the keywords);
    every guest made is closed after the test, and a failing test's report shows their state.
    Guests get the test's timeout, the guest_timeout fixture's value, looked up here rather than
    requested: one fixture fewer to set up and tear down for every test that makes a guest.

    A mode or page size that needs a CPU feature KVM_GET_SUPPORTED_CPUID does not report skips
    the test, naming the feature.
    """
    guest_timeout = guest_timeout_of(request.node, request.config)
    made: list[Guest] = []
    request.node.stash[GUESTS_KEY] = made

    def make(mode, source, *, page_size=KiB4, **kw):
        """One guest for this test (see the fixture); skips where its mode or page size needs a feature."""
        m = get_mode(mode)
        if page_size == GiB1 and not kvm.has_feature("pdpe1gb"):
            pytest.skip(f"1 GiB pages need CPU feature {FEATURES['pdpe1gb']}, "
                        "which KVM_GET_SUPPORTED_CPUID does not report")
        if m.requires and not kvm.has_feature(m.requires):
            pytest.skip(f"mode {m.name} needs CPU feature {FEATURES[m.requires]}, "
                        "which KVM_GET_SUPPORTED_CPUID does not report")
        kw.setdefault("timeout", guest_timeout)
        kw.setdefault("name", request.node.name)
        g = Guest(kvm, m, source, page_size=page_size, **kw)
        made.append(g)
        return g

    yield make
    for g in made:
        g.close()
