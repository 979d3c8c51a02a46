"""A guest's failure names the vCPU it happened on and shows that vCPU's registers, not the
first vCPU's (kvmtest.guest.runloop, kvmtest.guest.diagnostics). No KVM: the guest source is
composed and assembled as the builder does it, and two stand-in vCPUs hand the run loop the
protocol exit and the registers KVM_GET_REGS / KVM_GET_SREGS would."""

import ctypes

import pytest

from kvmtest.abi import constants as C
from kvmtest.abi.structs import kvm_regs, kvm_sregs
from kvmtest.asm import Section, assemble_sections
from kvmtest.errors import GuestFailure
from kvmtest.exits import IoExit
from kvmtest.guest import layout as L
from kvmtest.guest import protocol as P
from kvmtest.guest.compose import Composer
from kvmtest.guest.modes import MODES, mode_sregs
from kvmtest.guest.runloop import GuestRunLoop

MODE = MODES["long64"]
SOURCE = """
    GUEST_ASSERT_EQ rbx, 0x1234
    GUEST_DONE
"""


@pytest.fixture(autouse=True)
def no_disk_cache(monkeypatch):
    monkeypatch.setenv("KVMTEST_CACHE_DIR", "")


class FakeVcpu:
    """Answers KVM_RUN with one OUT to `port` and KVM_GET_REGS with `regs`."""

    def __init__(self, vcpu_id: int, regs: kvm_regs, port: int):
        self.id, self.name, self.closed = vcpu_id, f"vm0/vcpu{vcpu_id}", False
        self._regs, self._port = regs, port

    def run(self, timeout=None):
        return IoExit(C.KVM_EXIT_IO, None, C.KVM_EXIT_IO_OUT, 1, self._port, 1, 0, b"\0")

    def get_regs(self) -> kvm_regs:
        copy = kvm_regs()
        ctypes.memmove(ctypes.addressof(copy), ctypes.addressof(self._regs), ctypes.sizeof(copy))
        return copy

    def get_sregs(self) -> kvm_sregs:
        return mode_sregs(MODE, kvm_sregs(), cr3=0x20000)


class FakeVm:
    def __init__(self):
        self.vcpus: list[FakeVcpu] = []


class TwoVcpuGuest(GuestRunLoop):
    """The run loop and diagnostics of a Guest, over stand-in vCPUs."""

    def __init__(self, source: str):
        composer = Composer(MODE.code_bits)
        statements = composer.expand(source, "g.S")
        (code,) = assemble_sections([Section("code", L.CODE, MODE.code_bits, tuple(statements))], {})
        self.name, self.mode, self.vm = "g", MODE, FakeVm()
        self.max_exits, self.page_tables, self.syncs, self.output = 10, None, [], []
        self.symbols = {**code.equs, **code.labels}
        self.site_addresses = {site.kind: code.labels[label] for label, site in composer.sites.items()}
        self._site_at = {code.labels[label]: site for label, site in composer.sites.items()}
        self._vcpu_modes = {0: MODE, 1: MODE}

    def add(self, regs: kvm_regs, port: int) -> FakeVcpu:
        vcpu = FakeVcpu(len(self.vm.vcpus), regs, port)
        self.vm.vcpus.append(vcpu)
        self.vcpu = self.vm.vcpus[0]
        return vcpu


def _regs(**values) -> kvm_regs:
    regs = kvm_regs()
    for name, value in values.items():
        setattr(regs, name, value)
    return regs


def _failure_on_second_vcpu(port: int, **second_regs) -> str:
    g = TwoVcpuGuest(SOURCE)
    g.add(_regs(rip=0x8100, rbx=0x1111, rcx=0xC0C0), P.PORT_DONE)   # vCPU 0: elsewhere, other values
    second = g.add(_regs(**second_regs), port)
    with pytest.raises(GuestFailure) as info:
        g.run(vcpu=second)
    return str(info.value)


def test_failed_assertion_on_vcpu_1_shows_vcpu_1s_registers():
    site = TwoVcpuGuest(SOURCE).site_addresses["assert_eq"]
    text = _failure_on_second_vcpu(P.PORT_ASSERT, rip=site, rbx=0xB0B1, rsp=0x6800)
    assert "rbx = 0xb0b1, expected 0x1234" in text, text
    state = text.split("\n", 1)[1]
    assert "vm0/vcpu1" in state and f"rip={site:#x}" in state and "rbx=0xb0b1" in state and "rsp=0x6800" in state, \
        f"the failure on vCPU 1 does not dump vCPU 1's registers:\n{text}"
    assert "rbx=0x1111" not in state and "vm0/vcpu0" not in state, f"the failure on vCPU 1 dumps vCPU 0:\n{text}"


def test_unexpected_exception_on_vcpu_1_names_it_and_shows_its_registers():
    # The common handler reports vector, error code, RIP and CR2 in RBX, RCX, RDX and RSI.
    text = _failure_on_second_vcpu(P.PORT_EXCEPTION, rip=0x4AA0, rbx=13, rcx=0x18, rdx=0x8044, rsi=0)
    assert "unexpected #GP (vector 13) in the guest on vm0/vcpu1: error code 0x18, RIP 0x8044" in text, text
    state = text.split("\n", 1)[1]
    assert "vm0/vcpu1" in state and "rip=0x4aa0" in state and "rcx=0x18" in state, text
    assert "rcx=0xc0c0" not in state, f"the failure on vCPU 1 dumps vCPU 0:\n{text}"
