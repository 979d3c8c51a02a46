"""kvmtest's pytest options: each a kebab-case flag, an ini twin and a KVMTEST_* environment variable.

The command line wins over the environment, which wins over the ini file, which wins over the
default. A bad value is refused at start-up naming the value and where it came from
(`--kvm-guest-timeout='x' (from environment KVMTEST_GUEST_TIMEOUT): not a number of seconds`).
"""

import argparse
import os
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from .guest.modes import MODES
from .kvm import DEFAULT_DEVICE
from .vcpu import DEFAULT_RUN_TIMEOUT


@dataclass(frozen=True)
class Option:
    """One kvmtest option. `name` is the ini key; the flag is --kvm-<rest with dashes> and the
    environment variable KVMTEST_<REST> unless `env` names another. `kind` says how a raw value
    is converted and checked: str, float (seconds), paths (comma-separated files), bool, modes."""

    name: str
    help: str
    default: object
    kind: str = "str"
    env: str | None = None

    @property
    def flag(self) -> str:
        """The command-line flag, e.g. --kvm-guest-timeout."""
        return "--" + self.name.replace("_", "-")

    @property
    def dest(self) -> str:
        """The attribute name pytest stores the flag's value under."""
        return self.name

    @property
    def env_name(self) -> str:
        """The environment variable, e.g. KVMTEST_GUEST_TIMEOUT."""
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

def jobs_value(text: str) -> str:
    """The -j/--jobs argparse type of `kvmtest run` and `kvmtest known-issues verify`: 'auto', 0 (no
    pytest-xdist workers) or a number of workers; anything else is refused, not passed on to -n."""
    if text == "auto" or re.fullmatch(r"[0-9]+", text):
        return text
    raise argparse.ArgumentTypeError(f"{text!r}: expected 'auto', 0 (no workers) or a number of workers")


JOBS_PER_CPU = 4  # how far -j may oversubscribe the CPUs that run the tests


def jobs_problem(jobs: str, cpus: int, where: str, flag: str = "-j") -> str:
    """Why `flag` `jobs` (a jobs_value, or pytest-xdist's -n count) is refused where `cpus` CPUs run
    the tests, or "": more than JOBS_PER_CPU pytest processes per CPU. `where` says whose CPUs they are
    ("this process may use 2 CPUs"). Each process is a whole pytest session (kvmtest imported, every
    test collected) and the checks are CPU-bound, so more only costs memory: -j 100000 was a fork bomb.
    The count is read as pytest-xdist reads -n, with int() (' 8', '+8' and '1_0' are numbers too); one
    that is no number ('auto', xdist's 'logical', or one xdist refuses itself) is not checked here."""
    limit = JOBS_PER_CPU * cpus
    try:
        count = int(jobs)
    except ValueError:
        return ""
    if count <= limit:
        return ""
    return (f"{flag} {count}: more than {JOBS_PER_CPU} pytest processes per CPU, and {where}: give at most "
            f"{limit}, or 'auto' (each process is a whole pytest session, and the checks are CPU-bound)")


ACTIVE_KEY = pytest.StashKey[str]()     # why the session is kvmtest's ("" when dormant)
SETTINGS_KEY = pytest.StashKey[dict]()  # option name -> converted value


def add_options(parser) -> None:
    """Register every option in one "kvmtest" group, each with its ini twin (pytest_addoption)."""
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
                raise pytest.UsageError(f"{where}: not a number of seconds") from None
        problem = timeout_problem(value)
        if problem:  # NaN, infinite, 0 or less: a stuck guest would never be kicked
            raise pytest.UsageError(f"{where}: {problem}")
        return float(value)
    if opt.kind == "bool":
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off", ""):
            return False
        raise pytest.UsageError(f"{where}: expected true or false")
    if opt.kind == "paths":
        paths = [p.strip() for p in str(raw).split(",") if p.strip()]
        missing = [p for p in paths if not Path(p).is_file()]
        if missing:
            raise pytest.UsageError(f"{where}: no such file: {', '.join(missing)}")
        return paths
    if opt.kind == "modes":
        modes = [m.strip() for m in str(raw).split(",") if m.strip()]
        if not modes and (str(raw).strip() or source == "command line"):  # `--kvm-modes=` or `,`: not "all"
            raise pytest.UsageError(f"{where}: names no CPU mode; known: {', '.join(MODES)} "
                                    f"(leave the option out to run every mode)")
        bad = [m for m in modes if m not in MODES]
        if bad:
            raise pytest.UsageError(f"{where}: unknown CPU mode(s) {', '.join(bad)}; known: {', '.join(MODES)}")
        return modes
    return str(raw)


def resolve_settings(config) -> dict:
    """Each option from the command line, else the environment, else the ini file, else the default.

    Raises pytest.UsageError for a value that cannot be used, naming the flag, the value and where
    it came from."""
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


def check_given(given: list[tuple[str, str | None]], environ=None) -> dict:
    """Refuse now what resolve_settings would refuse at pytest_configure: the --kvm-* options in
    `given` ((flag, value or None) pairs as on a command line; the last of a flag wins, as in
    argparse) and, for the options not given, their KVMTEST_* variables in `environ` (default
    os.environ; {} to check the command line only). For `kvmtest run`, which checks its input before
    it starts pytest. Returns the converted values of the options checked (option name -> value).
    Raises pytest.UsageError with the plugin's own message. Ini keys are not read here (pytest finds
    the ini file); the plugin still refuses a bad one."""
    environ = os.environ if environ is None else environ
    by_flag = {o.flag: o for o in OPTIONS}
    cli = {by_flag[flag].name: value for flag, value in given if flag in by_flag}
    values = {}
    for opt in OPTIONS:
        if opt.name in cli:
            raw = cli[opt.name]
            if opt.kind == "bool" and raw is not None:  # a store_true flag: pytest's argparse would refuse it
                raise pytest.UsageError(f"{opt.flag}={raw!r} (from command line): takes no value")
            if opt.kind != "bool" and raw is None:
                raise pytest.UsageError(f"{opt.flag} (from command line): expects a value ({opt.flag}=VALUE)")
            values[opt.name] = True if raw is None else _convert(opt, raw, "command line")
        elif opt.env_name in environ:
            values[opt.name] = _convert(opt, environ[opt.env_name], f"environment {opt.env_name}")
    return values


def asked_for(config) -> str:
    """Which option, ini key or KVMTEST_* variable asks for kvmtest in this session, or ""."""
    for opt in OPTIONS:
        if config.getoption(opt.dest) is not None:
            return f"{opt.flag} given"
        if config.getini(opt.name) not in (None, "", []):
            return f"ini {opt.name} set"
    env = sorted(k for k in os.environ if k.startswith("KVMTEST_"))
    if env:
        return f"environment {env[0]} set"
    return ""


def active(config) -> bool:
    """Whether this pytest session is kvmtest's (kvmtest.plugin.activation); False in another
    project's session, where kvmtest's plugin stays dormant."""
    return bool(config.stash.get(ACTIVE_KEY, ""))


def settings(config) -> dict:
    """The session's option values (option name -> value), resolved at pytest_configure.

    Raises pytest.UsageError in a session where kvmtest's plugin is dormant, saying how to wake it."""
    if not active(config):
        raise pytest.UsageError("kvmtest's pytest plugin is dormant in this session (not kvmtest's suites): "
                                "pass -p kvmtest, a --kvm-* option, or set KVMTEST_PLUGIN=1")
    return config.stash[SETTINGS_KEY]
