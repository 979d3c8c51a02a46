"""kvmtest.guest.fault_probe: the probe's guest source and the host's reading of what it synced."""

import pytest

from kvmtest.asm import Section, assemble_sections
from kvmtest.errors import KvmtestError
from kvmtest.guest import fault_probe as FP
from kvmtest.guest.compose import Composer


@pytest.fixture(autouse=True)
def no_disk_cache(monkeypatch):
    monkeypatch.setenv("KVMTEST_CACHE_DIR", "")


def _assemble(mode, bits, user):
    c = Composer(bits, user=user)
    statements = c.expand(FP.fault_probe_source(mode, "nop", "ud2", "GUEST_SYNC 7"), "probe.S")
    (code,) = assemble_sections([Section("code", 0x8000, bits, tuple(statements))], {})
    return c, code


def test_compat32_probe_has_a_64bit_handler_reporting_over_port_io():
    c, code = _assemble("compat32-cpl3", 32, True)
    handler = code.labels[FP.HANDLER_LABEL]
    # mov rax, [rsp + 8] (REX.W 8B 44 24 08) then the CPL0 protocol site (NOP, OUT imm8).
    assert code.code[handler - 0x8000:handler - 0x8000 + 7] == bytes([0x48, 0x8B, 0x44, 0x24, 0x08, 0x90, 0xE6])
    kinds = [s.kind for s in c.sites.values()]
    assert kinds == ["sync", "sync", "done", "sync", "sync", "done"]


def test_pm32_probe_reads_32bit_stack_slots():
    _, code = _assemble("pm32", 32, False)
    handler = code.labels[FP.HANDLER_LABEL]
    assert code.code[handler - 0x8000:handler - 0x8000 + 4] == bytes([0x8B, 0x44, 0x24, 0x04])  # mov eax, [esp + 4]


@pytest.mark.parametrize("mode", ["real", "pm16"])
def test_16bit_modes_are_refused_by_name(mode):
    with pytest.raises(KvmtestError, match=f"mode {mode} has 16-bit code"):
        FP.fault_probe_source(mode, "", "ud2")


class _FakeGuest:
    name = "g"

    def __init__(self, values):
        self.values = values

    def run_to_done(self):
        return self.values


def test_outcome_of_a_completed_instruction_keeps_its_results():
    out = FP.probe_outcome(_FakeGuest([5, FP.NO_EXCEPTION]), 6)
    assert (out.faulted, out.results) == (False, (5,))
    assert "the instruction completed" in str(out)


def test_outcome_without_error_code_is_cs_then_rip():
    out = FP.probe_outcome(_FakeGuest([0x33, 0x8010]), 6)
    assert (out.faulted, out.rip, out.cs, out.error_code) == (True, 0x8010, 0x33, None)


def test_outcome_with_error_code_is_rip_then_code():
    out = FP.probe_outcome(_FakeGuest([0x8010, 0x1230]), 13)
    assert (out.rip, out.error_code, out.cs) == (0x8010, 0x1230, None)


def test_unexpected_sync_count_is_a_named_error():
    with pytest.raises(KvmtestError, match="fault probe synced"):
        FP.probe_outcome(_FakeGuest([1, 2, 3]), 6)
