"""What runs the kernel kvmtest is on: QEMU's TCG or nested KVM when `kvmtest run --kernel` booted
it (kvmtest/kernelvm/inner.py exports KVMTEST_ACCELERATOR to the pytest it starts in the VM),
nothing for a run straight on a host. The fingerprint records the same value ("accelerator").

Checks ask this only where the accelerator changes what they can afford or what QEMU survives,
never to change what they expect of KVM.
"""

import os

ENV = "KVMTEST_ACCELERATOR"


def accelerator() -> str:
    """"tcg" or "kvm" inside a `kvmtest run --kernel` VM, "none" on a host."""
    return os.environ.get(ENV) or "none"


def under_tcg() -> bool:
    """Whether QEMU's TCG emulates the CPU this kernel (and the KVM under test) runs on: every
    instruction is translated, so KVM is slower by orders of magnitude than on hardware."""
    return accelerator() == "tcg"
