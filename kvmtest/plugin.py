"""kvmtest's pytest plugin: the hooks that wire options, markers, known issues, the fingerprint and
the reports into a pytest session.

Registered through the `pytest11` entry point (and by the repository's conftest.py when kvmtest
is not installed). What each piece means lives beside it: options in kvmtest.options, fixtures
in kvmtest.fixtures (registered in pytest_addoption below), markers in kvmtest.markers, CPU
mode selection in kvmtest.guest.mode_select, reports in kvmtest.reports.

Installed, the plugin is loaded into every pytest session on the machine, but it stays dormant
(no /dev/kvm, no header, no hooks acting) unless the session is kvmtest's: see `activation`.
"""

import gc
import os
import sys
from pathlib import Path

import pytest

from . import fingerprint as fpmod
from . import fixtures, markers
from . import ioctl as _ioctl
from . import known_issues as ki
from .fixtures import GUESTS_KEY, close_session_kvm
from .options import ACTIVE_KEY, SETTINGS_KEY, active, add_options, asked_for, resolve_settings, settings
from .vcpu import install_kick_handler

FINGERPRINT_KEY = pytest.StashKey[dict]()
ISSUES_KEY = pytest.StashKey[list]()
ENTRY_POINT = "kvmtest"  # the pytest11 entry point's name (pyproject.toml)


def activation(config) -> str:
    """Why this pytest session is kvmtest's, or "" when it is some other project's.

    The plugin acts (opens /dev/kvm, loads known issues, prints its header, adds fixtures'
    behaviour) only when asked: a --kvm-* option or kvm_* ini setting, a KVMTEST_* environment
    variable (KVMTEST_PLUGIN=1 asks for nothing else), `-p kvmtest` / `-p kvmtest.plugin` (or a
    conftest's pytest_plugins naming it), or a session rooted in a kvmtest checkout (its
    suites and its own tests)."""
    asked = asked_for(config)
    if asked:
        return asked
    # `-p kvmtest` loads the entry point under its name; `-p kvmtest.plugin`, PYTEST_PLUGINS or a
    # conftest's pytest_plugins register the module under its own
    named = set(config.getoption("plugins", None) or [])
    if ENTRY_POINT in named or config.pluginmanager.get_name(sys.modules[__name__]) == __name__:
        return "loaded by name"
    root = Path(config.rootpath)
    if (root / "kvmtest" / "plugin.py").is_file() and (root / "suites").is_dir():
        return f"rootdir {root} is a kvmtest checkout"
    return ""


def pytest_plugin_registered(plugin, plugin_name, manager):
    """`-p kvmtest.plugin` registers this module under its module name before pytest loads the
    pytest11 entry points; the entry point would then register the same module again as
    "kvmtest", which pluggy refuses (a crash at start-up). Block that second registration."""
    if plugin is sys.modules[__name__] and plugin_name == __name__ and manager.get_plugin(ENTRY_POINT) is None:
        manager.set_blocked(ENTRY_POINT)


def pytest_addoption(parser, pluginmanager):
    """kvmtest's options, each with its ini twin (kvmtest.options.OPTIONS), and its fixtures.

    The fixtures module is registered as the imported module it is: named in `pytest_plugins`,
    pytest would mark it for assertion rewriting after this module imported it and warn, in every
    session, that it cannot be rewritten."""
    add_options(parser)
    if pluginmanager.get_plugin(fixtures.__name__) is None:
        pluginmanager.register(fixtures, fixtures.__name__)


def pytest_configure(config):
    """In kvmtest's sessions: the one-line-per-test terminal, the markers, the settings, the vCPU
    kick handler, the known-issue files, the host fingerprint and the report recorder."""
    config.stash[ACTIVE_KEY] = activation(config)
    if not active(config):
        return  # another project's session: leave it alone
    if not hasattr(config, "workerinput"):  # the controller writes the terminal; xdist workers do not
        from .reports.terminal import OneLinePerTest

        config.pluginmanager.register(OneLinePerTest(config), "kvmtest-one-line-per-test")
    markers.register(config)
    from .reports import tb_source

    tb_source.install()  # a known issue's xfails share their tracebacks' files: parse each once
    config.stash[SETTINGS_KEY] = resolve_settings(config)
    _check_asm_cache_settings(config)
    _check_hypothesis_profile(config)
    install_kick_handler()
    s = settings(config)
    files = [] if s["kvm_no_known_issues"] else (s["kvm_known_issues"] or [str(p) for p in ki.builtin_files()])
    try:
        config.stash[ISSUES_KEY] = ki.load_all(files)
    except ki.KnownIssueError as e:
        raise pytest.UsageError(str(e)) from None
    config.stash[FINGERPRINT_KEY] = fpmod.collect(s["kvm_device"])
    _check_named_device(config, s["kvm_device"], config.stash[FINGERPRINT_KEY])
    if not hasattr(config, "workerinput"):  # reports are written on the controller (or the only process)
        from .reports import recorder

        recorder.register(config, s, config.stash[FINGERPRINT_KEY])


def _check_named_device(config, device: str, fp: dict) -> None:
    """A device named with --kvm-device, KVMTEST_DEVICE or the ini key that KVM cannot be opened on
    (missing, empty, not a KVM device) is one usage error at start, as `kvmtest run` refuses it: not
    every test skipped with exit 0, nor one setup error per test. The default /dev/kvm missing still
    skips every suite test (no KVM on this machine)."""
    if fp.get("kvm") is not None:
        return
    if config.getoption("kvm_device") is not None:
        source = "--kvm-device"
    elif "KVMTEST_DEVICE" in os.environ:
        source = "environment KVMTEST_DEVICE"
    elif config.getini("kvm_device") not in (None, "", []):
        source = "ini kvm_device"
    else:
        return
    why = "empty device path" if not device else fp.get("kvm_error")
    raise pytest.UsageError(f"{source} {device!r}: {why}: nothing can be tested")


def _check_asm_cache_settings(config) -> None:
    """A bad KVMTEST_ASM_CACHE_ENTRIES or _MB is one usage error at start, not one failure per guest;
    a disk cache directory that cannot be written is one warning (the cache then stays off)."""
    from .asm import cache as asm_cache
    from .errors import BadArgumentError
    from .reports.recorder import unwritable

    try:
        asm_cache.entries_limit()
        disk = asm_cache.disk_limit()
    except BadArgumentError as e:
        raise pytest.UsageError(str(e)) from None
    folder = asm_cache.cache_dir()
    if disk and folder is not None and not hasattr(config, "workerinput"):  # once: on the controller
        problem = unwritable(folder, directory=True)
        if problem:
            where = asm_cache.DIR_VAR if os.environ.get(asm_cache.DIR_VAR) else "the default assembler cache"
            config.issue_config_time_warning(pytest.PytestConfigWarning(
                f"{where} {problem}: guests are assembled without the disk cache"), stacklevel=2)


def _check_hypothesis_profile(config) -> None:
    """A bad KVMTEST_HYPOTHESIS_PROFILE is one usage error at start, not one setup error per
    emulator test (kvmtest.differential.profiles, which imports hypothesis: only when it is set)."""
    from .errors import BadArgumentError

    if not os.environ.get("KVMTEST_HYPOTHESIS_PROFILE"):
        return
    from .differential import profiles

    try:
        profiles.profile_name(config.getoption("hypothesis_profile", None))
    except BadArgumentError as e:
        raise pytest.UsageError(str(e)) from None


def pytest_report_header(config):
    """The host in one line, its build, and how many known-issue entries apply and were verified on it."""
    if not active(config):
        return []
    fp = config.stash[FINGERPRINT_KEY]
    issues = config.stash[ISSUES_KEY]
    build = fpmod.build_id(fp)
    applying = [i for i in issues if i.matches_host(fp)]
    return [f"kvmtest: {fpmod.short(fp)}", f"kvmtest: build {build}",
            f"kvmtest: {len(issues)} known-issue entries, {len(applying)} apply to this host, "
            f"{sum(1 for i in applying if i.seen_on(build))} of them verified on this build"]


def pytest_generate_tests(metafunc):
    """One test per CPU mode of the `modes` marker (ids are the mode names), narrowed by
    --kvm-modes; a bad `modes`, `regression` or `waits` marker fails collection naming the test."""
    if not active(metafunc.config):
        return
    markers.regression(metafunc.definition)
    markers.waits(metafunc.definition)
    if "mode" not in metafunc.fixturenames:
        return
    names = markers.modes_of(metafunc.definition, settings(metafunc.config)["kvm_modes"])
    if names is not None:
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
    index = ki.IssueIndex(issues)
    for item in items:
        owner = index.first(item.nodeid)
        if owner is None:
            drop.append(item)
        else:
            item.user_properties.append(("verifying_known_issue", owner.id))
            keep.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
    return []


_NESTED_KEY = pytest.StashKey[bool]()


@pytest.hookimpl(trylast=True)
def pytest_collection_finish(session):
    """pytest hook: move everything collection built (thousands of items, their marks, the suites'
    modules and hypothesis strategies), alive for the whole session, out of the garbage collector's
    view: each full collection during the run would walk it all again (gc.freeze). A session run
    inside another's test (pytester; PYTEST_CURRENT_TEST is the outer test) undoes it when it ends
    (pytest_sessionfinish), so it leaks nothing into the outer process; any other session ends its
    process, and leaves it frozen: pytest's own ten full collections at exit then skip it too."""
    if not active(session.config):
        return  # another project's session: the plugin stays inert there
    session.config.stash[_NESTED_KEY] = "PYTEST_CURRENT_TEST" in os.environ
    gc.freeze()


def pytest_collection_modifyitems(config, items):
    """Known issues become xfail (or skip) marks; each item's report properties are set: known
    issue, regression (CVE, commit), CPU mode, and for mmu_dependent tests the host's MMU mode. A bad
    `regression` or `waits` mark given to one parameter is a usage error naming the test."""
    from .errors import BadArgumentError

    if not active(config):
        return
    fp = config.stash[FINGERPRINT_KEY]
    build = fpmod.build_id(fp)
    issues = _verify_selection(config, [i for i in config.stash[ISSUES_KEY] if i.matches_host(fp)], items)
    index = ki.IssueIndex(issues)  # the first entry whose glob matches a test covers it
    for item in items:
        issue = index.first(item.nodeid)
        if issue is not None:
            if issue.run:
                item.add_marker(pytest.mark.xfail(strict=issue.strict_on(build),
                                                  reason=issue.xfail_reason(build), raises=ki.HOST_FAILURES))
                if issue.hang_timeout is not None:  # first, so it is the closest guest_timeout marker
                    item.add_marker(pytest.mark.guest_timeout(issue.hang_timeout), append=False)
            else:
                item.add_marker(pytest.mark.skip(reason=issue.skip_reason()))
            item.user_properties.append(("known_issue", issue.id))
        try:
            item.user_properties += markers.regression(item)
            markers.waits(item)
        except BadArgumentError as e:  # a mark given to one parameter (pytest.param(..., marks=...)); the
            raise pytest.UsageError(str(e)) from None  # function's own fail its collection (pytest_generate_tests)
        params = item.callspec.params if hasattr(item, "callspec") else {}
        mode = params.get("mode") or getattr(params.get("case"), "mode", None)
        if isinstance(mode, str):  # --kvm-modes can leave pytest's NOTSET for a test with no mode left
            item.user_properties.append(("cpu_mode", mode))
        if item.get_closest_marker("mmu_dependent"):
            probe = fp["mmu"].get("probe_behaviour", "-")
            item.user_properties.append(("mmu_mode", f"{fp['mmu']['mode']} (probe: {probe})"))


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_terminal_summary(terminalreporter, config):
    """After pytest's own summary sections: the known-issue entries this build was never verified
    on (of those a test of which ran here) and those whose tests XPASSed, then the short test
    summary for -r chars f, E, s, x, X in kvmtest's form (reasons uncut, skips and xfails grouped:
    kvmtest.reports.terminal)."""
    if not active(config):
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
    xpassed: dict[str, list[str]] = {}  # entry id -> nodeids
    for report in terminalreporter.stats.get("xpassed", []):
        issue_id = dict(getattr(report, "user_properties", [])).get("known_issue")
        if issue_id:
            xpassed.setdefault(issue_id, []).append(report.nodeid)
    ran = _entries_that_ran(terminalreporter.stats)
    # only entries a test of which ran here: `known-issues verify` can verify nothing that only skips
    unverified = sorted(i for i, issue in applying.items() if i in ran and issue.run and not issue.seen_on(build))
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


RAN = ("passed", "failed", "xfailed", "xpassed")  # terminal stats categories of a test whose body ran


def _entries_that_ran(stats: dict) -> set[str]:
    """Ids of the known-issue entries at least one of whose tests ran its body in this session
    (passed, failed, xfailed or xpassed), from the reports in the terminal's `stats`: under
    pytest-xdist the controller has the workers' reports (with their user_properties), not the items.
    A test skipped or deselected, or one that errored in setup, verifies nothing."""
    ran: set[str] = set()
    for category in RAN:
        for report in stats.get(category, []):
            if getattr(report, "when", None) != "call":  # an xfail(run=False) is xfailed in setup
                continue
            props = dict(getattr(report, "user_properties", []))
            ran.update(filter(None, (props.get("known_issue"), props.get("verifying_known_issue"))))
    return ran


def pytest_runtest_setup(item):
    """Skip a test whose requires_cap / requires_cpu markers the host does not meet (kvmtest.markers)."""
    if not active(item.config):
        return
    markers.check_requirements(item, item.config.stash[FINGERPRINT_KEY])


def pytest_sessionfinish(session):
    """Close the session's KVM device if only a marker check opened it (the kvm fixture closes its own);
    in a session inside another's test, give what pytest_collection_finish froze back to the garbage
    collector. Any other kvmtest session freezes again what the run built and keeps to its end (every
    test's reports, for the summary): pytest's full collection at unconfigure (unraisableexception)
    would walk it all once more just before the process exits (0.11 s for a third of the paging and
    emulator tests)."""
    if session.config.stash.get(_NESTED_KEY, False):
        gc.unfreeze()
    elif _NESTED_KEY in session.config.stash:  # pytest_collection_finish froze: a kvmtest session
        gc.freeze()
    if active(session.config):
        close_session_kvm(session.config)


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
    if not active(item.config):
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

