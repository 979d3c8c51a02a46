"""kvmtest.shard_claims: the counter host shards claim their tests from (no /dev/kvm needed)."""

import os

import pytest

from kvmtest.shard_claims import Claims


def test_processes_claiming_at_once_get_every_index_exactly_once(tmp_path):
    """Four processes claim from one counter until it runs out: together they hold 0..count-1, each
    index once (O_APPEND serializes the appends; each reads its own file position)."""
    path, count = tmp_path / "claims", 3000
    path.touch()
    pids, outs = [], []
    for k in range(4):
        out = tmp_path / f"taken{k}"
        pid = os.fork()
        if pid == 0:  # the child: claim all it can, write what it got, leave without pytest's cleanup
            code = 1
            try:
                claims = Claims(str(path), count)
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
    taken = [[int(x) for x in out.read_text().split()] for out in outs]
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
])
def test_a_counter_that_cannot_count_is_a_usage_error(pytester, value, problem):
    """/dev/null's file position stays 0: every claim would be the same test, run for ever."""
    pytester.makepyfile("def test_a():\n    pass\n")
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
