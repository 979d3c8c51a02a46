"""kvmtest.reports.tb_source: pytest's failure tracebacks (kept as xfail details in kvmtest's
reports) must read exactly as without it, while each source text is parsed once."""

import ast
import gc
import inspect
import os
import textwrap
import weakref

import pytest
from _pytest._code import ExceptionInfo, Source
from _pytest._code import code as pytest_code
from _pytest._code import source as pytest_source

from kvmtest.guest import builder
from kvmtest.reports import tb_source


@pytest.fixture
def installed():
    assert tb_source.install(), "this pytest's _pytest._code no longer has getstatementrange_ast as expected"
    tb_source.clear()
    yield pytest_code.getstatementrange_ast
    tb_source.clear()


def _fail_deep(n):
    if n:
        _fail_deep(n - 1)
    assert n == 1, f"reached the bottom at {n}"


def _repr(style):
    try:
        _fail_deep(3)
    except AssertionError:
        info = ExceptionInfo.from_current()
    return str(info.getrepr(style=style, funcargs=True, showlocals=True))


@pytest.mark.parametrize("style", ["long", "short"])
def test_traceback_reads_as_without_the_cache(installed, style):
    first, again = _repr(style), _repr(style)  # the second from kept ASTs, paths, sources, summaries
    with tb_source.plain():
        assert pytest_code.getstatementrange_ast is installed.__wrapped__
        assert pytest_source.getstatementrange_ast is installed.__wrapped__
        plain = _repr(style)
    assert pytest_code.getstatementrange_ast is not installed.__wrapped__  # back in place
    assert first == plain and again == plain
    assert "_fail_deep(n - 1)" in plain and "reached the bottom at 0" in plain


def test_a_file_is_stat_ed_once_for_every_failure_it_appears_in(installed, monkeypatch):
    """Inside a VM a file-system call costs milliseconds over 9p: each traceback entry's file is
    looked at once per process, not several times per entry of every failure."""
    _repr("long")  # every file of the traceback is seen once
    stats = []
    real_stat = os.stat
    monkeypatch.setattr(os, "stat", lambda *a, **k: stats.append(a[0]) or real_stat(*a, **k))
    for _ in range(3):
        _repr("long")
    assert [s for s in stats if str(s).endswith(".py")] == []
    with tb_source.plain():
        _repr("long")
    assert [s for s in stats if str(s) == __file__], "pytest itself no longer stats the file: test is moot"


class _Held:
    pass


def _fail_holding(obj):
    assert obj is None


def _formatted_failure_holding(obj) -> str:
    try:
        _fail_holding(obj)
    except AssertionError:
        info = ExceptionInfo.from_current()
    return str(info.getrepr(style="long"))


def test_no_frame_of_a_formatted_failure_is_kept(installed):
    """The kept frame summaries are keyed by code position, never by frame: a failed test's
    objects (guests, VMs) are not kept alive by having been formatted."""
    held = _Held()
    ref = weakref.ref(held)
    assert "assert obj is None" in _formatted_failure_holding(held)
    del held
    gc.collect()
    assert ref() is None


def _boom():
    raise AssertionError("boom")


def _in_an_expression():
    return len("ab") + _boom()


def test_column_markers_read_as_without_the_cache(installed):
    """The `^^^` under the failing call come from the frame summaries, kept per code position."""
    def text():
        try:
            _in_an_expression()
        except AssertionError:
            return str(ExceptionInfo.from_current().getrepr(style="long"))

    first, again = text(), text()
    with tb_source.plain():
        plain = text()
    assert first == again == plain
    assert "return len(\"ab\") + _boom()\n" in plain and "^^^^^^^" in plain


def test_each_source_text_is_parsed_once(installed, monkeypatch):
    parses = []
    real_parse = ast.parse
    monkeypatch.setattr(ast, "parse", lambda *a, **k: parses.append(1) or real_parse(*a, **k))
    text = Source(open(builder.__file__).read())
    ranges = [installed(n, text)[1:] for n in range(10, 300, 7)]
    assert len(parses) == 1
    want = [installed.__wrapped__(n, text)[1:] for n in range(10, 300, 7)]  # parses each time
    assert ranges == want and len(parses) == 1 + len(want)


def test_changed_source_text_is_parsed_again(installed):
    before = Source(textwrap.dedent("""
        def f():
            x = 1
            return x
    """))
    after = Source(textwrap.dedent("""
        def f():
            x = 1

            y = 2
            return x + y
    """))
    node_before, *range_before = installed(3, before)
    node_after, *range_after = installed(3, after)
    assert node_before is not node_after
    assert range_after == list(installed.__wrapped__(3, after)[1:])
    assert installed(3, before)[0] is node_before  # still kept


def test_a_syntax_error_is_raised_as_before_and_not_kept(installed):
    broken = Source("def f(:\n    pass\n")
    for _ in range(2):
        with pytest.raises(SyntaxError):
            installed(0, broken)


def test_formatting_does_not_map_every_module_to_its_file(installed, monkeypatch):
    """inspect.findsource asks inspect.getmodule, which realpath()s every loaded module's file once
    per process (thousands of file-system calls: seconds over 9p inside a VM); source lines come
    from linecache instead, the same lines."""
    calls = []
    real_getmodule = inspect.getmodule
    monkeypatch.setattr(inspect, "getmodule", lambda *a, **k: calls.append(a) or real_getmodule(*a, **k))
    fast = _repr("long")
    assert calls == []
    with tb_source.plain():
        assert _repr("long") == fast
    assert calls, "pytest's own look-up no longer asks inspect.getmodule: the test is moot"


def test_paths_are_shown_relative_to_the_working_directory_of_the_moment(installed, monkeypatch, tmp_path):
    """A file is named relative to the working directory when that is shorter, as pytest names it;
    the kept names are per working directory, so a test that changes it sees its own."""
    here = _repr("long")
    monkeypatch.chdir(tmp_path)
    there = _repr("long")
    with tb_source.plain():
        assert _repr("long") == there
    monkeypatch.chdir(os.path.dirname(__file__))
    again = _repr("long")
    with tb_source.plain():
        assert _repr("long") == again
    assert "test_traceback_source_cache.py:" in here and __file__ in there and here != again
