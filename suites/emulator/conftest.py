"""Shared set-up of the emulator area: the paths every differential check runs (made once per
session, per xdist worker: guests are reused across checks), and the `differential` fixture that
runs one form's property with the session's hypothesis profile and seed, recorded in the report."""

import pytest
from hypothesis import settings as hypothesis_settings

from kvmtest.differential import profiles
from kvmtest.differential.check import check_form
from kvmtest.differential.kvm_paths import kvm_paths
from kvmtest.differential.reference import UnicornPath
from kvmtest.options import settings


@pytest.fixture(scope="session")
def emulator_paths(kvm, pytestconfig):
    """paths(code_bits) -> the KVM paths and the reference for that code size, built on first use
    and closed at the end of the session."""
    made = {}
    timeout = settings(pytestconfig)["kvm_guest_timeout"]

    def paths(code_bits: int) -> list:
        if code_bits not in made:
            made[code_bits] = kvm_paths(kvm, code_bits, timeout) + [UnicornPath(code_bits)]
        return made[code_bits]

    yield paths
    for each in made.values():
        for path in each:
            if hasattr(path, "close"):
                path.close()


@pytest.fixture
def differential(emulator_paths, request, record_property, pytestconfig):
    """check(form): the differential property of one form (kvmtest.differential.check). The seed
    goes into the test's JUnit properties (hypothesis_seed) and every failure message, with the
    command that replays it."""
    seed = profiles.seed(pytestconfig.getoption("hypothesis_seed", None))
    name = profiles.profile_name(hypothesis_settings.get_current_profile_name())
    record_property("hypothesis_seed", seed)
    record_property("hypothesis_profile", name)
    note = f"reproduce: {profiles.PROFILE_ENV}={name} pytest '{request.node.nodeid}' --hypothesis-seed={seed}"
    profile = hypothesis_settings.get_profile(name)

    def check(form) -> None:
        record_property("instruction", form.text)
        check_form(form, emulator_paths(form.code_bits), profile, seed, note)

    return check
