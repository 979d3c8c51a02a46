"""One parse of each source file for all of a run's failure tracebacks, not one per failure.

pytest formats the long traceback of every failed test, xfails included (kvmtest's reports keep
it as an xfail's details). For each traceback entry it finds the statement around the failing
line by parsing the entry's whole source file into an AST, and it keeps that AST only while it
formats one failure: a known issue that xfails a thousand tests through the same six library
files parsed those files six thousand times, most of a paging run's CPU time.

install() wraps pytest's `getstatementrange_ast` so that the AST of a given source text is
parsed once and reused, keyed by the text itself: a file edited during the run is new text and
is parsed again. The statement ranges, and so every traceback, come out exactly as without it.
Where pytest's internals are not as expected, nothing is installed and pytest parses as before.
"""

import functools
import inspect
import threading
from collections import OrderedDict

ENTRIES = 32  # source texts whose AST is kept: a traceback spans a handful of files
_EXPECTED_PARAMS = ["lineno", "source", "assertion", "astnode"]
_asts: OrderedDict = OrderedDict()  # source text -> its AST (as pytest parsed it)
_lock = threading.Lock()  # tests may fail on several threads of one process
_installed = False


def _cached(original):
    @functools.wraps(original)  # __wrapped__: the original, for tests and for taking it back
    def getstatementrange_ast(lineno, source, assertion=False, astnode=None):
        if astnode is not None:
            return original(lineno, source, assertion, astnode)
        text = str(source)  # what pytest itself parses
        with _lock:
            astnode = _asts.get(text)
            if astnode is not None:
                _asts.move_to_end(text)
        if astnode is not None:
            return original(lineno, source, assertion, astnode)
        result = original(lineno, source, assertion, None)  # SyntaxError propagates, as before
        with _lock:
            _asts[text] = result[0]
            while len(_asts) > ENTRIES:
                _asts.popitem(last=False)
        return result

    return getstatementrange_ast


def install() -> bool:
    """Reuse each source text's AST in pytest's traceback formatting (idempotent); False where this
    pytest's `_pytest._code` does not have the function as expected, and nothing was changed."""
    global _installed
    if _installed:
        return True
    try:
        from _pytest._code import code, source

        original = source.getstatementrange_ast
    except (ImportError, AttributeError):
        return False
    if getattr(code, "getstatementrange_ast", None) is not original:
        return False
    try:
        if list(inspect.signature(original).parameters) != _EXPECTED_PARAMS:
            return False
    except (TypeError, ValueError):
        return False
    wrapper = _cached(original)
    # code.py imported the name; source.py's Source.getstatementrange looks it up in its own module.
    code.getstatementrange_ast = source.getstatementrange_ast = wrapper
    _installed = True
    return True


def clear() -> None:
    """Forget every kept AST."""
    with _lock:
        _asts.clear()
