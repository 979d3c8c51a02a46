"""What KVM lets a guest have, next to what the host CPU has, for `kvmtest info`.

The two differ by design: KVM_GET_SUPPORTED_CPUID reports only the CPUID features that both the
hardware and KVM (as configured) support (api.rst 4.46), and KVM_GET_EMULATED_CPUID those KVM
can emulate beyond them (api.rst, KVM_GET_EMULATED_CPUID). A host flag KVM does not report is
one no guest gets, which is why a host with smap can skip every test that needs smap.
"""

from .cpuid import FEATURES, has_feature

# kvmtest.cpuid.FEATURES names that /proc/cpuinfo spells differently
CPUINFO_NAMES = {"tsc_deadline": "tsc_deadline_timer"}


def host_flags(cpuinfo_text: str | None = None) -> set[str]:
    """Every flag of the first CPU in /proc/cpuinfo."""
    if cpuinfo_text is None:
        try:
            with open("/proc/cpuinfo") as f:
                cpuinfo_text = f.read()
        except OSError:
            return set()
    for line in cpuinfo_text.split("\n\n", 1)[0].splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return set(value.split())
    return set()


def kvm_features(kvm) -> tuple[set[str], set[str]]:
    """(reported by KVM_GET_SUPPORTED_CPUID, reported by KVM_GET_EMULATED_CPUID) among FEATURES."""
    supported = {name for name in FEATURES if kvm.has_feature(name)}
    try:
        table = kvm.emulated_cpuid()
    except OSError:  # KVM_CAP_EXT_EMUL_CPUID absent: nothing emulated to report
        table = []
    return supported, {name for name in FEATURES if has_feature(table, name)}


def lines(host: set[str], supported: set[str], emulated: set[str]) -> list[str]:
    """The `kvmtest info` lines comparing the host CPU with what KVM reports."""
    known = list(FEATURES)
    missing = [n for n in known if n not in supported]
    on_host = [n for n in missing if CPUINFO_NAMES.get(n, n) in host]
    only_emulated = [n for n in missing if n in emulated]
    out = [f"  guest cpu: KVM_GET_SUPPORTED_CPUID reports {len(known) - len(missing)} of the {len(known)} "
           "CPU features kvmtest knows:",
           f"    reported:     {' '.join(n for n in known if n in supported) or 'none'}",
           f"    not reported: {' '.join(missing) or 'none'} (tests that need them skip)"]
    if on_host:
        out.append(f"    on the host CPU but not reported by KVM: {' '.join(on_host)} "
                   "(no guest gets them: KVM reports what it virtualizes, not what the host has)")
    if only_emulated:
        out.append(f"    emulated only (KVM_GET_EMULATED_CPUID): {' '.join(only_emulated)}")
    return out
