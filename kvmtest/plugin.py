"""kvmtest's pytest plugin: options, fixtures, markers, known issues, fingerprint, reports.

Registered through the `pytest11` entry point (and by the repository's conftest.py when
kvmtest is not installed). Every option has a kebab-case flag, an ini twin and a KVMTEST_*
environment variable; the command line wins over the environment, which wins over the
ini file.

Installed, the plugin is loaded into every pytest session on the machine, but it stays dormant
(no /dev/kvm, no header, no hooks acting) unless the session is kvmtest's: see `activation`.
"""

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from . import fingerprint as fpmod
from . import ioctl as _ioctl
from . import known_issues as ki
from .cpuid import FEATURES
from .abi.constants import CAPABILITY_NAMES
from .errors import DeviceError
from .guest import ALL_MODES, CPL0_MODES, MODES, Guest, get_mode
from .guest.paging import GiB1, KiB4
from .kvm import DEFAULT_DEVICE, Kvm, cap_number
from .vcpu import DEFAULT_RUN_TIMEOUT, install_kick_handler


@dataclass(frozen=True)
class Option:
    name: str          # ini name; flag is --kvm-<name with dashes>, env KVMTEST_<NAME>
    help: str
    default: object
    kind: str = "str"  # str, float, paths, bool, modes
    env: str | None = None

    @property
    def flag(self):
        return "--" + self.name.replace("_", "-")

    @property
    def dest(self):
        return self.name

    @property
    def env_name(self):
        return self.env or "KVMTEST_" + self.name.upper().removeprefix("KVM_")


OPTIONS = [
    Option("kvm_device", "KVM device to test", DEFAULT_DEVICE, env="KVMTEST_DEVICE"),
    Option("kvm_guest_timeout", "seconds one KVM_RUN may take before the guest is kicked and the test fails",
           DEFAULT_RUN_TIMEOUT, "float", env="KVMTEST_GUEST_TIMEOUT"),
    Option("kvm_report_dir", "write the JUnit, KTAP and HTML reports into this directory as "
           "kvmtest-<host>-<kernel>-<time>.{xml,ktap,html} (--kvm-junit/--kvm-ktap/--kvm-html name one file "
           "instead)", "", env="KVMTEST_REPORT_DIR"),
    Option("kvm_junit", "write kvmtest's JUnit file (fingerprint included) to this path", "",
           env="KVMTEST_JUNIT"),
    Option("kvm_ktap", "write a KTAP v1 report to this path", "", env="KVMTEST_KTAP"),
    Option("kvm_html", "write a self-contained HTML report to this path", "", env="KVMTEST_HTML"),
    Option("kvm_baseline", "JUnit files or directories to compare with in the HTML report (comma-separated)", "",
           env="KVMTEST_BASELINE"),
    Option("kvm_known_issues", "known-issue TOML files (comma-separated); default: the ones shipped with kvmtest",
           "", "paths", env="KVMTEST_KNOWN_ISSUES"),
    Option("kvm_no_known_issues", "do not apply known-issue files (every deviation fails)", False, "bool",
           env="KVMTEST_NO_KNOWN_ISSUES"),
    Option("kvm_modes", "only run mode-parametrized tests in these CPU modes (comma-separated)", "", "modes",
           env="KVMTEST_MODES"),
    Option("kvm_verify_known_issues", "run only the tests of these known-issue entries (comma-separated ids, or "
           "'all' for every entry that applies to this host), without xfail, to re-verify them "
           "(used by `kvmtest known-issues verify`)", "", env="KVMTEST_VERIFY_KNOWN_ISSUES"),
]

FINGERPRINT_KEY = pytest.StashKey[dict]()
SETTINGS_KEY = pytest.StashKey[dict]()
ISSUES_KEY = pytest.StashKey[list]()
GUESTS_KEY = pytest.StashKey[list]()  # the guests a test made, for its failure report


class OptionError(pytest.UsageError):
    pass


ENTRY_POINT = "kvmtest"  # the pytest11 entry point's name (pyproject.toml)
ACTIVE_KEY = pytest.StashKey[str]()


def activation(config) -> str:
    """Why this pytest session is kvmtest's, or "" when it is some other project's.

    The plugin acts (opens /dev/kvm, loads known issues, prints its header, adds fixtures'
    behaviour) only when asked: a --kvm-* option or kvm_* ini setting, a KVMTEST_* environment
    variable (KVMTEST_PLUGIN=1 asks for nothing else), `-p kvmtest` / `-p kvmtest.plugin` (or a
    conftest's pytest_plugins naming it), or a session rooted in a kvmtest checkout (its
    suites and its own tests)."""
    for opt in OPTIONS:
        if config.getoption(opt.dest) is not None:
            return f"{opt.flag} given"
        if config.getini(opt.name) not in (None, "", []):
            return f"ini {opt.name} set"
    env = sorted(k for k in os.environ if k.startswith("KVMTEST_"))
    if env:
        return f"environment {env[0]} set"
    # `-p kvmtest` loads the entry point under its name; `-p kvmtest.plugin`, PYTEST_PLUGINS or a
    # conftest's pytest_plugins register the module under its own
    named = set(config.getoption("plugins", None) or [])
    if ENTRY_POINT in named or config.pluginmanager.get_name(sys.modules[__name__]) == __name__:
        return "loaded by name"
    root = Path(config.rootpath)
    if (root / "kvmtest" / "plugin.py").is_file() and (root / "suites").is_dir():
        return f"rootdir {root} is a kvmtest checkout"
    return ""


def _active(config) -> bool:
    return bool(config.stash.get(ACTIVE_KEY, ""))


def pytest_plugin_registered(plugin, plugin_name, manager):
    """`-p kvmtest.plugin` registers this module under its module name before pytest loads the
    pytest11 entry points; the entry point would then register the same module again as
    "kvmtest", which pluggy refuses (a crash at start-up). Block that second registration."""
    if plugin is sys.modules[__name__] and plugin_name == __name__ and manager.get_plugin(ENTRY_POINT) is None:
        manager.set_blocked(ENTRY_POINT)


def pytest_addoption(parser):
    group = parser.getgroup("kvmtest", "kvmtest: KVM conformance suite")
    for opt in OPTIONS:
        if opt.kind == "bool":
            group.addoption(opt.flag, action="store_true", default=None, dest=opt.dest,
                            help=f"{opt.help} (env {opt.env_name}, ini {opt.name})")
            parser.addini(opt.name, opt.help, type="bool", default=None)
        else:
            group.addoption(opt.flag, default=None, dest=opt.dest,
                            help=f"{opt.help} (default {opt.default!r}; env {opt.env_name}, ini {opt.name})")
            parser.addini(opt.name, opt.help, default=None)


def _convert(opt: Option, raw, source: str):
    where = f"{opt.flag}={raw!r} (from {source})"
    if opt.kind == "float":
        from .validate import timeout_problem

        value = raw
        if isinstance(raw, str):
            try:
                value = float(raw)  # also parses "nan", "inf" and "1e999", refused below
            except ValueError:
                raise OptionError(f"{where}: not a number of seconds") from None
        problem = timeout_problem(value)
        if problem:  # NaN, infinite, 0 or less: a stuck guest would never be kicked
            raise OptionError(f"{where}: {problem}")
        return float(value)
    if opt.kind == "bool":
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off", ""):
            return False
        raise OptionError(f"{where}: expected true or false")
    if opt.kind == "paths":
        paths = [p.strip() for p in str(raw).split(",") if p.strip()]
        missing = [p for p in paths if not Path(p).is_file()]
        if missing:
            raise OptionError(f"{where}: no such file: {', '.join(missing)}")
        return paths
    if opt.kind == "modes":
        modes = [m.strip() for m in str(raw).split(",") if m.strip()]
        bad = [m for m in modes if m not in MODES]
        if bad:
            raise OptionError(f"{where}: unknown CPU mode(s) {', '.join(bad)}; known: {', '.join(MODES)}")
        return modes
    return str(raw)


def resolve_settings(config) -> dict:
    """Each option from the command line, else the environment, else the ini file, else the default."""
    settings = {}
    for opt in OPTIONS:
        cli = config.getoption(opt.dest)
        if cli is not None:
            settings[opt.name] = _convert(opt, cli, "command line")
        elif opt.env_name in os.environ:
            settings[opt.name] = _convert(opt, os.environ[opt.env_name], f"environment {opt.env_name}")
        elif config.getini(opt.name) not in (None, "", []):
            settings[opt.name] = _convert(opt, config.getini(opt.name), f"ini {opt.name}")
        else:
            settings[opt.name] = _convert(opt, opt.default, "default") if opt.kind != "paths" else []
    return settings


def settings(config) -> dict:
    if not _active(config):
        raise pytest.UsageError("kvmtest's pytest plugin is dormant in this session (not kvmtest's suites): "
                                "pass -p kvmtest, a --kvm-* option, or set KVMTEST_PLUGIN=1")
    return config.stash[SETTINGS_KEY]


def pytest_configure(config):
    config.stash[ACTIVE_KEY] = activation(config)
    if not _active(config):
        return  # another project's session: leave it alone
    if not hasattr(config, "workerinput"):  # the controller writes the terminal; xdist workers do not
        from .reports.terminal import OneLinePerTest

        config.pluginmanager.register(OneLinePerTest(config), "kvmtest-one-line-per-test")
    config.addinivalue_line("markers", "requires_cap(name, minimum=1): skip unless KVM_CHECK_EXTENSION(name) >= minimum")
    config.addinivalue_line("markers", "requires_cpu(feature): skip unless KVM_GET_SUPPORTED_CPUID reports the feature")
    config.addinivalue_line("markers", "modes(*names): run the test once per CPU mode ('all', 'cpl0' or mode names); "
                                       "the test takes a `mode` argument")
    config.addinivalue_line("markers", "guest_timeout(seconds): per-KVM_RUN timeout for guests made in this test")
    config.addinivalue_line("markers", "regression(commit=None, cve=None): the kernel fix or CVE this test pins")
    config.stash[SETTINGS_KEY] = resolve_settings(config)
    install_kick_handler()
    s = settings(config)
    files = [] if s["kvm_no_known_issues"] else (s["kvm_known_issues"] or [str(p) for p in ki.builtin_files()])
    try:
        config.stash[ISSUES_KEY] = ki.load_all(files)
    except ki.KnownIssueError as e:
        raise pytest.UsageError(str(e)) from None
    config.stash[FINGERPRINT_KEY] = fpmod.collect(s["kvm_device"])
    if not hasattr(config, "workerinput"):  # reports are written on the controller (or the only process)
        from .reports import recorder

        recorder.register(config, s, config.stash[FINGERPRINT_KEY])


def pytest_report_header(config):
    if not _active(config):
        return []
    fp = config.stash[FINGERPRINT_KEY]
    issues = config.stash[ISSUES_KEY]
    build = fpmod.build_id(fp)
    applying = [i for i in issues if i.matches_host(fp)]
    return [f"kvmtest: {fpmod.short(fp)}", f"kvmtest: build {build}",
            f"kvmtest: {len(issues)} known-issue entries, {len(applying)} apply to this host, "
            f"{sum(1 for i in applying if i.seen_on(build))} of them verified on this build"]


def pytest_generate_tests(metafunc):
    marker = metafunc.definition.get_closest_marker("modes")
    if marker is None or "mode" not in metafunc.fixturenames or not _active(metafunc.config):
        return
    names = []
    for arg in marker.args or ("all",):
        names += {"all": ALL_MODES, "cpl0": CPL0_MODES}.get(arg, [arg])
    for n in names:
        get_mode(n)  # an unknown name fails collection with the list of modes
    only = settings(metafunc.config)["kvm_modes"]
    if only:
        names = [n for n in names if n in only]
    metafunc.parametrize("mode", names, ids=names)


def _verify_selection(config, issues, items):
    """--kvm-verify-known-issues: keep only the named entries' tests, and apply none of them."""
    wanted = settings(config)["kvm_verify_known_issues"]
    if not wanted:
        return issues
    ids = {w.strip() for w in wanted.split(",") if w.strip()}
    issues = [i for i in issues if i.run]  # a test that takes the host down is never run, even to verify it
    if ids != {"all"}:
        unknown = ids - {i.id for i in issues}
        if unknown:
            raise pytest.UsageError(f"--kvm-verify-known-issues: no entry {', '.join(sorted(unknown))} applies to "
                                    f"this host; applying: {', '.join(i.id for i in issues) or 'none'}")
        issues = [i for i in issues if i.id in ids]
    keep, drop = [], []
    for item in items:
        owner = next((i for i in issues if i.matches_test(item.nodeid)), None)
        if owner is None:
            drop.append(item)
        else:
            item.user_properties.append(("verifying_known_issue", owner.id))
            keep.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
    return []


def pytest_collection_modifyitems(config, items):
    if not _active(config):
        return
    fp = config.stash[FINGERPRINT_KEY]
    build = fpmod.build_id(fp)
    issues = _verify_selection(config, [i for i in config.stash[ISSUES_KEY] if i.matches_host(fp)], items)
    for item in items:
        for issue in issues:
            if issue.matches_test(item.nodeid):
                if issue.run:
                    item.add_marker(pytest.mark.xfail(strict=issue.strict_on(build),
                                                      reason=issue.xfail_reason(build), raises=ki.HOST_FAILURES))
                else:
                    item.add_marker(pytest.mark.skip(reason=issue.skip_reason()))
                item.user_properties.append(("known_issue", issue.id))
                break
        reg = item.get_closest_marker("regression")
        if reg:
            for key in ("commit", "cve"):
                if reg.kwargs.get(key):
                    item.user_properties.append((f"regression_{key}", reg.kwargs[key]))
        params = item.callspec.params if hasattr(item, "callspec") else {}
        mode = params.get("mode") or getattr(params.get("case"), "mode", None)
        if isinstance(mode, str):  # --kvm-modes can leave pytest's NOTSET for a test with no mode left
            item.user_properties.append(("cpu_mode", mode))
        if "/paging/" in item.nodeid:
            item.user_properties.append(("mmu_mode", f"{fp['mmu']['mode']} (probe: {fp['mmu'].get('probe_behaviour', '-')})"))


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_terminal_summary(terminalreporter, config):
    """After pytest's own summary sections: the known-issue entries this build was never verified
    on and those whose tests XPASSed, then the short test summary for -r chars f, E, s, x, X
    in kvmtest's form (reasons uncut, skips and xfails grouped: kvmtest.reports.terminal)."""
    if not _active(config):
        return (yield)
    from .reports import terminal

    chars = terminalreporter.reportchars
    terminalreporter.reportchars = "".join(c for c in chars if c not in terminal.CHARS)
    try:
        return (yield)
    finally:
        terminalreporter.reportchars = chars
        _known_issue_summary(terminalreporter, config)
        terminal.write_summary(terminalreporter, "".join(c for c in chars if c in terminal.CHARS))


def _known_issue_summary(terminalreporter, config):
    fp = config.stash[FINGERPRINT_KEY]
    build = fpmod.build_id(fp)
    applying = {i.id: i for i in config.stash[ISSUES_KEY] if i.matches_host(fp)}
    xpassed = {}
    for report in terminalreporter.stats.get("xpassed", []):
        issue_id = dict(getattr(report, "user_properties", [])).get("known_issue")
        if issue_id:
            xpassed.setdefault(issue_id, []).append(report.nodeid)
    unverified = sorted(i for i, issue in applying.items() if issue.run and not issue.seen_on(build))
    if not (xpassed or unverified):
        return
    terminalreporter.section("kvmtest known issues")
    for issue_id, nodeids in sorted(xpassed.items()):
        terminalreporter.write_line(f"XPASS of {issue_id}: the host did not deviate in {len(nodeids)} test(s), "
                                    f"e.g. {nodeids[0]}")
    if unverified:
        terminalreporter.write_line(f"{len(unverified)} entries apply to this host but were never verified on its "
                                    f"build ({build}); their xfails are not strict here: {', '.join(unverified)}")
        terminalreporter.write_line("re-verify them on this host with: kvmtest known-issues verify --write")


def pytest_runtest_setup(item):
    if not _active(item.config):
        return
    for marker in item.iter_markers("requires_cap"):
        _check_cap(item, *marker.args, **marker.kwargs)
    for marker in item.iter_markers("requires_cpu"):
        _check_cpu(item, *marker.args)


def _check_cap(item, name, minimum=1):
    fp = item.config.stash[FINGERPRINT_KEY]
    if fp.get("kvm") is None:
        return  # the kvm fixture reports why KVM is unusable
    full = CAPABILITY_NAMES.name(cap_number(name))
    value = fpmod.capability(fp, full)
    if value < minimum:
        pytest.skip(f"needs {full} >= {minimum}; KVM_CHECK_EXTENSION reports {value}")


def _check_cpu(item, feature):
    fp = item.config.stash[FINGERPRINT_KEY]
    if fp.get("kvm") is None:
        return
    if feature not in FEATURES:
        raise pytest.UsageError(f"requires_cpu({feature!r}): unknown feature; known: {', '.join(FEATURES)}")
    with Kvm(settings(item.config)["kvm_device"]) as kvm:
        if not kvm.has_feature(feature):
            pytest.skip(f"needs CPU feature {FEATURES[feature]}, which KVM_GET_SUPPORTED_CPUID does not report")


# --- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def kvm(pytestconfig):
    """The system handle (/dev/kvm), one per session (per xdist worker).

    Skips the test when the device does not exist; a device that exists but cannot be
    opened read-write is an error naming the permission.
    """
    path = settings(pytestconfig)["kvm_device"]
    if not os.path.exists(path):
        pytest.skip(f"no {path} (is KVM loaded?)")
    try:
        handle = Kvm(path)
    except DeviceError as e:
        if str(e).startswith("no "):
            pytest.skip(str(e))
        raise
    yield handle
    handle.close()


@pytest.fixture
def vm(kvm):
    """A bare VM (KVM_CREATE_VM), closed after the test."""
    with kvm.create_vm() as v:
        yield v


@pytest.fixture
def vm_with_memory(vm):
    """A VM with 2 MiB of guest memory at guest physical 0 (slot 0)."""
    vm.add_memory(0, 0x200000, slot=0)
    return vm


@pytest.fixture
def guest_timeout(request, pytestconfig) -> float:
    """The per-KVM_RUN timeout: the guest_timeout marker, else --kvm-guest-timeout."""
    from .validate import timeout

    marker = request.node.get_closest_marker("guest_timeout")
    if marker is None:
        return settings(pytestconfig)["kvm_guest_timeout"]
    where = f"@pytest.mark.guest_timeout on {request.node.nodeid}"
    if len(marker.args) != 1 or marker.kwargs:
        from .errors import InvalidTimeoutError

        raise InvalidTimeoutError(f"{where}: takes one number of seconds, got args={marker.args!r} "
                                  f"kwargs={marker.kwargs!r}")
    return timeout(marker.args[0], where)


@pytest.fixture
def guest(kvm, guest_timeout, request):
    """Factory: guest(mode, source, **kw) -> kvmtest.guest.Guest, closed after the test.

    A mode that needs a CPU feature KVM does not report skips the test, naming the feature.
    """
    made = []
    request.node.stash[GUESTS_KEY] = made

    def make(mode, source, *, page_size=KiB4, **kw):
        m = get_mode(mode)
        if page_size == GiB1 and not kvm.has_feature("pdpe1gb"):
            pytest.skip(f"1 GiB pages need CPU feature {FEATURES['pdpe1gb']}, which KVM_GET_SUPPORTED_CPUID does not report")
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


_kernel_log = None


def _kmsg():
    global _kernel_log
    if _kernel_log is None:
        from .reports.kmsg import KernelLog

        _kernel_log = KernelLog()
    return _kernel_log


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """Failure diagnostics: the last ioctls and exits, and the kernel's KVM log lines of the test."""
    report = yield
    if not _active(item.config):
        return report
    if report.when == "setup":
        _ioctl.clear_trace()
        _kmsg().mark()
    if report.when == "call" and report.failed:
        for g in item.stash.get(GUESTS_KEY, []):
            if g.vm is not None and not g.vm.closed:
                states = [g.state(v) for v in g.vm.vcpus if not v.closed]
                report.sections.append((f"guest {g.name} ({g.mode.name})", "\n".join(states)))
        report.sections.append(("kvmtest trace", "\n".join(_ioctl.recent(30))))
        text = _kmsg().test_section()  # this process's lines only (reports/kmsg.py)
        if text:
            report.sections.append(("kernel log (KVM)", text))
    return report

