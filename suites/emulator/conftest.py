"""Shared set-up of the emulator area: the paths every differential check runs (made once per
session, per xdist worker: guests are reused across checks), the `differential` fixture that runs
one form's property with the session's hypothesis profile and seed, recorded in the report, and the
`refusal` fixture for the instructions KVM's emulator must refuse.

The forced-emulation paths (cpl3-fep, cpl0-fep) exist only where the kvm module has
force_emulation_prefix set (kvmtest.forced_emulation.enabled()); elsewhere every check runs without
them and records why in its `fep_paths` property (forced_emulation.SKIP_REASON)."""

import pytest
from hypothesis import settings as hypothesis_settings

from kvmtest import forced_emulation
from kvmtest.cpuid import has_feature
from kvmtest.differential import profiles
from kvmtest.differential.check import check_form
from kvmtest.differential.kvm_paths import kvm_paths, vcpu_cpuid
from kvmtest.differential.reference import UnicornPath
from kvmtest.differential.refusal import check_refusal
from kvmtest.options import settings
from kvmtest.reports.skips import FEATURE_GROUP


@pytest.fixture(scope="session")
def emulator_cpuid(kvm):
    """The CPUID every path's vCPU gets (kvm_paths.vcpu_cpuid)."""
    return vcpu_cpuid(kvm)


@pytest.fixture(scope="session")
def emulator_fep():
    """Whether the forced-emulation paths run: the kvm module's force_emulation_prefix."""
    return forced_emulation.enabled()


@pytest.fixture(scope="session")
def emulator_paths(kvm, pytestconfig, emulator_cpuid, emulator_fep):
    """paths(code_bits) -> the KVM paths (with the forced-emulation ones where emulator_fep) and
    the reference for that code size, built on first use and closed at the end of the session."""
    made = {}
    timeout = settings(pytestconfig)["kvm_guest_timeout"]

    def paths(code_bits: int) -> list:
        if code_bits not in made:
            made[code_bits] = kvm_paths(kvm, code_bits, timeout, emulator_cpuid, fep=emulator_fep) + \
                [UnicornPath(code_bits)]
        return made[code_bits]

    yield paths
    for each in made.values():
        for path in each:
            if hasattr(path, "close"):
                path.close()


def _require_feature(form, cpuid) -> None:
    """Skip, naming it, when the vCPUs lack the form's CPUID feature: the CPU runs such an instruction
    whatever the guest's CPUID says (no VMX/SVM intercept exists for most), so there is nothing for
    the emulated paths to agree with (suites/cpu/test_cpuid_gated_instructions.py checks the #UD)."""
    if form.feature and not has_feature(cpuid, form.feature):
        pytest.skip(f"{FEATURE_GROUP} {form.feature}")


@pytest.fixture
def differential(emulator_paths, emulator_cpuid, emulator_fep, request, record_property, pytestconfig):
    """check(form): the differential property of one form (kvmtest.differential.check). The seed
    goes into the test's JUnit properties (hypothesis_seed) and every failure message, with the
    command that replays it; `fep_paths` says whether the forced-emulation paths ran, or why not.
    A form KVM's emulator must refuse (forms.REFUSED) runs on the paths that do not force
    emulation (the refusal fixture checks the others). A form without a memory operand (a register
    form, BSWAP) runs on the paths without MMIO: there its MMIO twin would only repeat the RAM run."""
    seed = profiles.seed(pytestconfig.getoption("hypothesis_seed", None))
    name = profiles.profile_name(hypothesis_settings.get_current_profile_name())
    record_property("hypothesis_seed", seed)
    record_property("hypothesis_profile", name)
    note = f"reproduce: {profiles.PROFILE_ENV}={name} pytest '{request.node.nodeid}' --hypothesis-seed={seed}"
    profile = hypothesis_settings.get_profile(name)

    def check(form) -> None:
        record_property("instruction", form.text)
        _require_feature(form, emulator_cpuid)
        paths = [p for p in emulator_paths(form.code_bits)
                 if (form.emulated or not getattr(p, "forces_emulation", False))
                 and (form.memory or not getattr(p, "mmio", False))]
        forced = [p.name for p in paths if getattr(p, "fep", False)]
        record_property("fep_paths", (", ".join(forced) or "none: KVM's emulator refuses this form (test_refusals.py)")
                        if emulator_fep else f"absent: {forced_emulation.SKIP_REASON}")
        check_form(form, paths, profile, seed, note)

    return check


@pytest.fixture
def refusal(emulator_paths, record_property):
    """check(form): a form KVM's emulator does not implement ends as documented on every path that
    forces emulation, MMIO and forced-emulation prefix (kvmtest.differential.refusal)."""
    def check(form) -> None:
        record_property("instruction", form.text)
        check_refusal(form, emulator_paths(form.code_bits))

    return check
