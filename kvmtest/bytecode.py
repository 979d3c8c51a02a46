"""Where `kvmtest run` keeps Python bytecode when the environment says not to write it.

With PYTHONDONTWRITEBYTECODE set (common in containers and CI images, to keep __pycache__ out of
source trees) every pytest process compiles kvmtest and rewrites every suite module's asserts from
source: half of a whole-suite collection's CPU, paid again by each pytest-xdist worker. Python's
PYTHONPYCACHEPREFIX (3.8) keeps bytecode in a tree of its own instead, so the source tree stays as
clean as the setting wants, and the workers (they inherit the environment) and later runs reuse it.
An explicit PYTHONPYCACHEPREFIX is left as it is.
"""

import os
import sys
from pathlib import Path


def cache_prefix() -> Path:
    """$XDG_CACHE_HOME/kvmtest/pycache, else ~/.cache/kvmtest/pycache (a relative XDG_CACHE_HOME is
    ignored, as the XDG base directory specification says: it would put the cache in the checkout)."""
    base = os.environ.get("XDG_CACHE_HOME", "")
    if not os.path.isabs(base):
        base = str(Path.home() / ".cache")
    return Path(base) / "kvmtest" / "pycache"


def keep_bytecode_outside_the_tree() -> Path | None:
    """If bytecode writing is off (PYTHONDONTWRITEBYTECODE or -B) and no PYTHONPYCACHEPREFIX is set,
    turn it on with cache_prefix() as the prefix, for this process and those it starts; returns the
    prefix, or None where nothing changed (also when the prefix cannot be created)."""
    if not sys.dont_write_bytecode or os.environ.get("PYTHONPYCACHEPREFIX"):
        return None
    prefix = cache_prefix()
    try:
        prefix.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None  # a read-only home: compile from source, as asked
    if not os.access(prefix, os.W_OK):
        return None
    os.environ["PYTHONPYCACHEPREFIX"] = str(prefix)
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    sys.pycache_prefix = str(prefix)
    sys.dont_write_bytecode = False
    return prefix
