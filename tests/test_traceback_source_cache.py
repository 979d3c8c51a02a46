"""kvmtest.reports.tb_source: pytest's failure tracebacks (kept as xfail details in kvmtest's
reports) must read exactly as without it, while each source text is parsed once."""

import ast
import textwrap

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
def test_traceback_reads_as_without_the_cache(installed, monkeypatch, style):
    first, again = _repr(style), _repr(style)  # the second from kept ASTs
    monkeypatch.setattr(pytest_code, "getstatementrange_ast", installed.__wrapped__)
    monkeypatch.setattr(pytest_source, "getstatementrange_ast", installed.__wrapped__)
    plain = _repr(style)
    assert first == plain and again == plain
    assert "_fail_deep(n - 1)" in plain and "reached the bottom at 0" in plain


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
