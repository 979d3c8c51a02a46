"""kvmtest.shard_claims: the counter host shards claim their tests from (no /dev/kvm needed)."""

import os

import pytest

from kvmtest.shard_claims import Claims, Queues
from kvmtest.shard_log import read_log


def _claim_in_processes(tmp_path, claimers: list) -> list[list[int]]:
    """Each of `claimers` (a function making a Claims or Queues) in a process of its own, all at once,
    claiming until it runs out; what each took, in claim order."""
    pids, outs = [], []
    for k, make in enumerate(claimers):
        out = tmp_path / f"taken{k}"
        pid = os.fork()
        if pid == 0:  # the child: claim all it can, write what it got, leave without pytest's cleanup
            code = 1
            try:
                claims = make()
                while claims.next() is not None:
                    pass
                out.write_text(" ".join(map(str, claims.taken)))
                code = 0
            finally:
                os._exit(code)
        pids.append(pid)
        outs.append(out)
    for pid in pids:
        assert os.waitpid(pid, 0)[1] == 0
    return [[int(x) for x in out.read_text().split()] for out in outs]


def test_processes_claiming_at_once_get_every_index_exactly_once(tmp_path):
    """Four processes claim from one counter until it runs out: together they hold 0..count-1, each
    index once (O_APPEND serializes the appends; each reads its own file position)."""
    path, count = tmp_path / "claims", 3000
    path.touch()
    taken = _claim_in_processes(tmp_path, [lambda: Claims(str(path), count)] * 4)
    together = sorted(i for mine in taken for i in mine)
    assert together == list(range(count)), "an index claimed twice or never"
    assert all(mine == sorted(mine) for mine in taken)  # each process gets its indices in order


def test_claims_end_with_none_and_stay_ended(tmp_path):
    path = tmp_path / "claims"
    path.touch()
    claims = Claims(str(path), 2)
    assert [claims.next(), claims.next(), claims.next(), claims.next()] == [0, 1, None, None]
    assert claims.taken == [0, 1]
    claims.close()


def test_a_missing_counter_file_is_a_usage_error_naming_it(pytester):
    pytester.makepyfile("def test_a():\n    pass\n")
    result = pytester.runpytest("-p", "kvmtest.shard_claims", f"--kvm-shard-claims={pytester.path / 'nosuch'}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--kvm-shard-claims=*nosuch: No such file or directory*"])


@pytest.mark.parametrize("value, problem", [
    ("/dev/null", "--kvm-shard-claims=/dev/null: not a regular file: expected the counter file the shards share"),
    ("", "--kvm-shard-claims: empty; expected the counter file the shards share"),
    ("fifo", "fifo: not a regular file"),
    ("words", "words: holds something other than claims (the shards start it empty)"),
])
def test_a_counter_that_cannot_count_is_a_usage_error(pytester, tmp_path_factory, value, problem):
    """/dev/null's file position stays 0: every claim would be the same test, run for ever; a FIFO
    would block the open; a file with other content would shift every claim (and be appended to)."""
    pytester.makepyfile("def test_a():\n    pass\n")
    elsewhere = tmp_path_factory.mktemp("counters")  # not in the directory pytest collects from
    os.mkfifo(elsewhere / "fifo")
    (elsewhere / "words").write_text("hello\n")
    if value in ("fifo", "words"):
        value = str(elsewhere / value)
    result = pytester.runpytest("-p", "kvmtest.shard_claims", f"--kvm-shard-claims={value}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert problem in result.stderr.str()


def test_shards_that_collected_different_tests_are_refused(pytester):
    """A claim is an index into the collected tests: a second shard whose ids differ (drawn at random
    per process here) stops with a usage error naming the cause instead of running other tests."""
    pytester.makepyfile("import random\nimport pytest\n\n"
                        "@pytest.mark.parametrize('x', [random.random()])\ndef test_a(x):\n    pass\n")
    claims = pytester.path / "claims"
    claims.touch()
    first = pytester.runpytest_subprocess("-p", "kvmtest.shard_claims", f"--kvm-shard-claims={claims}")
    assert first.ret == pytest.ExitCode.OK
    second = pytester.runpytest_subprocess("-p", "kvmtest.shard_claims", f"--kvm-shard-claims={claims}")
    assert second.ret == pytest.ExitCode.USAGE_ERROR
    assert "this shard collected other tests than the first shard did" in second.stderr.str()
    # a refused shard reports none of the tests (the first one ran them): no second entry per test
    third = pytester.runpytest_subprocess("-p", "kvmtest.shard_claims", f"--kvm-shard-claims={claims}",
                                          f"--kvm-junit={pytester.path / 'third.xml'}")
    assert third.ret == pytest.ExitCode.USAGE_ERROR
    assert "<testcase" not in (pytester.path / "third.xml").read_text()


def test_a_shards_log_gives_finished_running_and_waiting_tests(pytester):
    """The log a shard writes (--kvm-shard-log), read back as kvmtest run reads a dead shard's: each
    finished test's status and message, none still running here, none claimed and left waiting."""
    pytester.makepyfile("import pytest\n\ndef test_ok():\n    pass\n\n"
                        "def test_bad():\n    assert 1 == 2, 'one is not two'\n\n"
                        "@pytest.mark.xfail(reason='known', strict=True)\ndef test_known():\n    assert False\n")
    claims, log = pytester.path / "claims", pytester.path / "shard.log"
    claims.touch()
    result = pytester.runpytest("-p", "kvmtest.shard_claims", f"--kvm-shard-claims={claims}", f"--kvm-shard-log={log}",
                                "--kvm-junit=r.xml")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    done, running, waiting = read_log(log)
    assert {nodeid.split("::")[1]: status for nodeid, (status, _) in done.items()} == \
        {"test_ok": "passed", "test_bad": "failed", "test_known": "xfailed"}
    assert "one is not two" in next(m for n, (s, m) in done.items() if n.endswith("test_bad"))
    assert (running, waiting) == ([], [])


def test_a_log_cut_short_gives_what_it_holds(tmp_path):
    """A shard killed mid-write leaves a last line without its newline: that line is not read."""
    log = tmp_path / "shard.log"
    log.write_text("claim\ta.py::t1\nstart\ta.py::t1\ndone\ta.py::t1\tpassed\t\nclaim\ta.py::t2\n"
                   "claim\ta.py::t3\nstart\ta.py::t2\ndone\ta.py::t2\tfail")
    assert read_log(log) == ({"a.py::t1": ("passed", "")}, ["a.py::t2"], ["a.py::t3"])
    assert read_log(tmp_path / "nosuch.log") == ({}, [], [])


def test_an_unwritable_log_is_a_usage_error_naming_it(pytester):
    pytester.makepyfile("def test_a():\n    pass\n")
    claims = pytester.path / "claims"
    claims.touch()
    result = pytester.runpytest("-p", "kvmtest.shard_claims", f"--kvm-shard-claims={claims}",
                                f"--kvm-shard-log={pytester.path / 'no' / 'such' / 'dir.log'}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "--kvm-shard-log=" in result.stderr.str() and "No such file or directory" in result.stderr.str()


def test_a_log_that_is_not_a_regular_file_is_a_usage_error(pytester, tmp_path_factory):
    """A FIFO as the shard's log would block its open for ever (no reader)."""
    pytester.makepyfile("def test_a():\n    pass\n")
    claims, fifo = pytester.path / "claims", tmp_path_factory.mktemp("logs") / "fifo"
    claims.touch()
    os.mkfifo(fifo)
    result = pytester.runpytest("-p", "kvmtest.shard_claims", f"--kvm-shard-claims={claims}", f"--kvm-shard-log={fifo}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert f"--kvm-shard-log={fifo}: not a regular file" in result.stderr.str()


class _Item:
    """What Queues asks of a pytest item: its `waits` marker."""

    def __init__(self, waits: bool):
        self.waits = waits

    def get_closest_marker(self, name):
        return object() if name == "waits" and self.waits else None


def test_a_waits_shard_and_the_others_claim_every_test_once_the_waits_shard_only_marked_ones(tmp_path):
    """Three processes claim at once, one of them the waits shard: together they hold every test
    once; the waits shard holds only marked tests; the others take unmarked tests before marked ones."""
    path = tmp_path / "claims"
    path.touch()
    items = [_Item(i % 7 == 3) for i in range(2000)]
    marked = {i for i, item in enumerate(items) if item.waits}
    taken = _claim_in_processes(tmp_path, [lambda: Queues(str(path), items, False)] * 2 +
                                [lambda: Queues(str(path), items, True)])
    assert sorted(i for mine in taken for i in mine) == list(range(len(items))), "a test claimed twice or never"
    assert set(taken[2]) <= marked, "the waits shard claimed an unmarked test"
    for mine in taken[:2]:
        first_marked = next((n for n, i in enumerate(mine) if i in marked), len(mine))
        assert all(i in marked for i in mine[first_marked:]), "a shard claimed an unmarked test after a marked one"


def test_a_shard_cut_short_claims_the_rest_of_its_own_queues_only(tmp_path):
    path = tmp_path / "claims"
    path.touch()
    items = [_Item(i in (1, 4)) for i in range(6)]
    waits = Queues(str(path), items, True)
    assert waits.next() == 1
    waits.take_the_rest()
    assert waits.taken == [1, 4]  # the marked ones, none of the others
    other = Queues(str(path), items, False)
    other.take_the_rest()
    assert other.taken == [0, 2, 3, 5]
    waits.close()
    other.close()


def test_a_second_counter_that_cannot_count_is_a_usage_error_naming_it(pytester, tmp_path_factory):
    pytester.makepyfile("def test_a():\n    pass\n")
    elsewhere = tmp_path_factory.mktemp("counters")
    (elsewhere / "claims").touch()
    os.mkfifo(elsewhere / "claims.waits")
    result = pytester.runpytest("-p", "kvmtest.shard_claims", f"--kvm-shard-claims={elsewhere / 'claims'}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert f"its second counter {elsewhere / 'claims.waits'}: not a regular file" in result.stderr.str()


def test_shards_started_one_after_the_other_run_what_their_role_allows(pytester):
    """A waits shard run first takes the marked test and nothing else; a shard run after it takes
    the rest; a waits shard run after that finds nothing left."""
    pytester.makepyfile("import pytest\n\ndef test_a():\n    pass\n\n"
                        "@pytest.mark.waits\ndef test_b():\n    pass\n\ndef test_c():\n    pass\n")
    claims = pytester.path / "claims"
    claims.touch()
    options = ["-p", "kvmtest.shard_claims", f"--kvm-shard-claims={claims}", "-p", "no:cacheprovider", "-v"]
    first = pytester.runpytest_subprocess(*options, "--kvm-shard-role=waits")
    assert first.ret == pytest.ExitCode.OK
    assert [line.split()[0].split("::")[1] for line in first.stdout.lines if " PASSED" in line] == ["test_b"]
    assert not (pytester.path / "claims.marked").exists()  # a waits shard tells nobody how many are marked
    second = pytester.runpytest_subprocess(*options)
    assert [line.split()[0].split("::")[1] for line in second.stdout.lines if " PASSED" in line] == \
        ["test_a", "test_c"]
    assert (pytester.path / "claims.marked").read_text() == "1"  # for kvmtest run, which starts the waits shard
    third = pytester.runpytest_subprocess(*options, "--kvm-shard-role=waits")
    assert not [line for line in third.stdout.lines if " PASSED" in line]


def test_a_shard_alone_takes_the_unmarked_tests_then_the_marked_ones(tmp_path):
    """With no waits shard claiming (it died, or has not started yet), the others run the marked
    tests too, after their own."""
    path = tmp_path / "claims"
    path.touch()
    queues = Queues(str(path), [_Item(i in (0, 3)) for i in range(5)], False)
    queues.take_the_rest()
    assert queues.taken == [1, 2, 4, 0, 3]
    queues.close()


@pytest.mark.parametrize("option", ["--kvm-shard-role=waits", "--kvm-shard-log=shard.log"])
def test_a_shard_option_without_a_counter_is_a_usage_error(pytester, option):
    """A role or a log without the counters would run every test in one process, as if nothing had
    been asked (and write no log)."""
    pytester.makepyfile("def test_a():\n    pass\n")
    result = pytester.runpytest("-p", "kvmtest.shard_claims", option)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert f"{option.split('=')[0]}: needs --kvm-shard-claims=FILE" in result.stderr.str()


def test_the_shard_plugins_load_without_a_rewrite_warning(pytester):
    """Outside the checkout (a user's own tests), the shard's plugins load as pytest plugins, not
    imported first by one another: pytest warns of a module it can no longer rewrite, an error under
    -W error."""
    pytester.makepyfile("def test_a():\n    pass\n")
    claims = pytester.path / "claims"
    claims.touch()
    result = pytester.runpytest_subprocess("-W", "error", "-p", "kvmtest.shard_claims", f"--kvm-shard-claims={claims}",
                                           "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.OK, result.stdout.str() + result.stderr.str()
    assert "PytestAssertRewriteWarning" not in result.stdout.str() + result.stderr.str()
