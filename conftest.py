"""Loads the kvmtest plugin when kvmtest is used from a checkout without being installed
(an installed kvmtest registers it through its pytest11 entry point)."""

import os
from importlib.metadata import entry_points


def _plugin_autoloaded() -> bool:
    if os.environ.get("PYTEST_DISABLE_PLUGIN_AUTOLOAD"):
        return False
    return any(ep.name == "kvmtest" for ep in entry_points(group="pytest11"))


# pytester drives pytest in kvmtest's own tests and in the suites that check reporting.
pytest_plugins = ["pytester"] + ([] if _plugin_autoloaded() else ["kvmtest.plugin"])
