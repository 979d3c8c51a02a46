"""Hypothesis profiles of the differential checks, and the seed each run uses.

  kvmtest-fast   (default) a few examples per form: the whole table within the suites' budget
  kvmtest-deep   hundreds per form, for nightly runs

Pick one with pytest's `--hypothesis-profile=kvmtest-deep` (registered when the checkout's
conftest.py imports this module, before hypothesis's pytest plugin reads the option) or with
KVMTEST_HYPOTHESIS_PROFILE=kvmtest-deep. The seed is `--hypothesis-seed=N`, else
KVMTEST_HYPOTHESIS_SEED, else drawn once per session; the checks record it in each test's report,
and the same seed replays the same examples.
"""

import os
import random

from hypothesis import HealthCheck, Phase, settings

from ..errors import BadArgumentError

FAST, DEEP = "kvmtest-fast", "kvmtest-deep"
PROFILE_ENV, SEED_ENV = "KVMTEST_HYPOTHESIS_PROFILE", "KVMTEST_HYPOTHESIS_SEED"

# No example database: a run is reproduced by its seed. (Hypothesis still caches the integer constants it
# reads from kvmtest's sources, once per module and process, in .hypothesis/constants, which it git-ignores;
# HYPOTHESIS_STORAGE_DIRECTORY moves that.)
# No deadline: KVM_RUN's time varies with the host's load. The health checks that judge data size
# and speed are about generators run in microseconds, not ones that start guests.
settings.register_profile(FAST, max_examples=6, deadline=None, database=None, print_blob=False,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
                          phases=[Phase.explicit, Phase.generate, Phase.shrink])
settings.register_profile(DEEP, settings.get_profile(FAST), max_examples=400)


def profile_name(cli_profile: str | None = None) -> str:
    """The profile to run with: KVMTEST_HYPOTHESIS_PROFILE, else the profile hypothesis loaded if it
    is one of ours (`--hypothesis-profile`, passed here as `cli_profile`), else kvmtest-fast."""
    name = os.environ.get(PROFILE_ENV) or (cli_profile if cli_profile in (FAST, DEEP) else FAST)
    if name not in (FAST, DEEP):
        raise BadArgumentError(f"{PROFILE_ENV}={name!r}: expected {FAST} or {DEEP}")
    return name


_session_seed = random.SystemRandom().getrandbits(32)


def seed(cli_seed: str | None = None) -> int | str:
    """The seed: `--hypothesis-seed` (`cli_seed`), else KVMTEST_HYPOTHESIS_SEED, else this
    process's own. Decimal seeds are ints, as hypothesis's own option makes them."""
    value = cli_seed if cli_seed is not None else os.environ.get(SEED_ENV)
    if value is None or value == "":
        return _session_seed
    return int(value) if str(value).isdigit() else value
