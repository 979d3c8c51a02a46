"""What pytest looks up to format a failure's traceback, looked up once per run, not once per failure.

pytest formats the long traceback of every failed test, xfails included (kvmtest's reports keep
it as an xfail's details), and a known issue xfails hundreds of tests through the same few library
functions. For each traceback entry pytest
- parses the entry's whole source file into an AST, and tokenizes the failing statement to find
  its end, keeping the AST only while it formats one failure (six thousand parses of six library
  files were most of a paging run's CPU time);
- asks whether the entry's file exists (`Code.path`, about six times per entry);
- reads the file's lines through `inspect.findsource`, which stats the file again and, the first
  time in a process, realpath()s the file of every loaded module (inspect.getmodule: thousands of
  file-system calls);
- extracts the entry's frame summary (for the `^^^` column markers) three times, each stat-ing
  the file through `linecache.checkcache`;
- names the file relative to the working directory (bestrelpath).
On the host these are microseconds; inside a VM under `kvmtest run --kernel`, where every
file-system call goes over 9p (milliseconds each), they were most of what an xfail cost.

install() makes each of these look-ups once per process and key: the AST of a source text and the
statement range of each of its lines (keyed by the text itself: a changed text is parsed again),
whether a file exists and its lines (keyed by its path: source files do not change during a
session, and the code that raised is the code that was imported, not what an editor may have
saved since; the lines come from linecache, as inspect reads them, without its module scan), the
frame summary of a code position (keyed by the code object, instruction and line, never by the
frame: nothing here keeps a test's frames, and so its objects, alive), and a file's shown name
(keyed by the working directory of the moment). Every traceback comes out exactly as without it.
Each piece is installed only where pytest's internals are as expected; elsewhere pytest does as
before. The caches are bounded.
"""

import contextlib
import functools
import inspect
import os
import pathlib
import threading
import traceback
from collections import OrderedDict
from collections.abc import Callable

ENTRIES = 32  # source texts whose AST is kept: a traceback spans a handful of files
FILES = 256   # files whose existence and lines are kept
POSITIONS = 1024  # code positions whose frame summary is kept
_EXPECTED_PARAMS = ["lineno", "source", "assertion", "astnode"]
_asts: OrderedDict = OrderedDict()  # source text -> (its AST as pytest parsed it, {(lineno, assertion): (start, end)})
_paths: OrderedDict = OrderedDict()  # co_filename -> Code.path's answer
_sources: OrderedDict = OrderedDict()  # co_filename -> Code.fullsource's answer (never None)
_summaries: OrderedDict = OrderedDict()  # (id(code), lasti, lineno) -> (code, extract_tb's StackSummary)
_shown_paths: OrderedDict = OrderedDict()  # (working directory, file) -> the file as a traceback names it
_lock = threading.Lock()  # tests may fail on several threads of one process
_installed: list[tuple[object, str, object]] = []  # (owner, attribute, pytest's own value), as replaced
_MISSING = object()


def _get(cache: OrderedDict, key):
    with _lock:
        value = cache.get(key, _MISSING)
        if value is not _MISSING:
            cache.move_to_end(key)
        return value


def _put(cache: OrderedDict, key, value, bound: int) -> None:
    with _lock:
        cache[key] = value
        while len(cache) > bound:
            cache.popitem(last=False)


def _cached(original):
    @functools.wraps(original)  # __wrapped__: the original, for tests and for taking it back
    def getstatementrange_ast(lineno, source, assertion=False, astnode=None):
        if astnode is not None:
            return original(lineno, source, assertion, astnode)
        text = str(source)  # what pytest itself parses
        kept = _get(_asts, text)
        if kept is _MISSING:
            result = original(lineno, source, assertion, None)  # SyntaxError propagates, as before
            _put(_asts, text, (result[0], {(lineno, assertion): result[1:]}), ENTRIES)
            return result
        astnode, ranges = kept
        # The range of a line follows from the text alone (its AST, then tokenizing the statement
        # to find its end): kept beside the AST, as many as the text has lines.
        span = ranges.get((lineno, assertion))
        if span is None:
            result = original(lineno, source, assertion, astnode)
            with _lock:
                ranges[(lineno, assertion)] = result[1:]
            return result
        return (astnode, *span)

    return getstatementrange_ast


def _real_file(code) -> str | None:
    """The code's file name where it names a file (not `<string>` and the like, which many
    different sources share), else None."""
    filename = getattr(code, "co_filename", None)
    if isinstance(filename, str) and os.path.isabs(filename) and not filename.startswith("<"):
        return filename
    return None


def _path_property(original: Callable, doc: str | None) -> property:
    def path(self):
        filename = _real_file(self.raw)
        if filename is None:
            return original(self)
        answer = _get(_paths, filename)
        if answer is _MISSING:
            answer = original(self)
            _put(_paths, filename, answer, FILES)
        return answer

    return property(path, doc=doc)


class _LinesOnly:
    """A code object's stand-in that inspect.findsource refuses (it is no code object), so that
    pytest's findsource falls back, as it does for any such refusal, to the file's lines through
    linecache alone. inspect.findsource would first call inspect.getmodule, which realpath()s the
    file of every module in sys.modules once per process: thousands of file-system calls, seconds
    over 9p. For a source file on disk both read the same lines (inspect reads them through
    linecache too)."""

    __slots__ = ("__code__",)

    def __init__(self, code):
        self.__code__ = code


def _lines_only(findsource):
    """pytest's findsource through its linecache fallback, where it has one that reads this very
    file as linecache does; else None (then pytest's own look-up is used)."""
    import linecache

    try:
        got, _ = findsource(_LinesOnly(_lines_only.__code__))
        want = [line.rstrip() for line in linecache.getlines(_lines_only.__code__.co_filename)]
    except Exception:  # noqa: BLE001 - any surprise: no fast path, pytest's own look-up
        return None
    if got is None or not want or list(got.lines) != want:
        return None
    return findsource


def _fullsource_property(original: Callable, doc: str | None, source_class, findsource) -> property:
    def fullsource(self):
        filename = _real_file(self.raw)
        if filename is None:
            return original(self)
        answer = _get(_sources, filename)
        if answer is _MISSING:
            answer = None
            if findsource is not None and filename.endswith(".py") and os.path.isfile(filename):
                answer, _ = findsource(_LinesOnly(self.raw))
            if answer is None:
                answer = original(self)
            if answer is None:
                return None  # not found now: asked again next time, as before
            _put(_sources, filename, answer, FILES)
        return source_class(answer)  # a Source of its own, sharing the (never changed) line lists

    return property(fullsource, doc=doc)


def _cached_extract_tb(original):
    @functools.wraps(original)
    def extract_tb(tb, limit=None):
        if limit != 1 or tb is None:
            return original(tb, limit)
        code = tb.tb_frame.f_code
        key = (id(code), tb.tb_lasti, tb.tb_lineno)
        kept = _get(_summaries, key)
        if kept is _MISSING or kept[0] is not code:  # the code object kept with it rules out a reused id
            kept = (code, original(tb, limit))
            _put(_summaries, key, kept, POSITIONS)
        return traceback.StackSummary.from_list(list(kept[1]))

    return extract_tb


def _cached_makepath(original):
    @functools.wraps(original)
    def _makepath(self, path):
        if getattr(self, "abspath", True) or not isinstance(path, pathlib.Path):
            return original(self, path)
        try:
            cwd = os.getcwd()  # what pytest's Path.cwd() reads: a test may have changed it
        except OSError:
            return original(self, path)
        key = (cwd, path)
        shown = _get(_shown_paths, key)
        if shown is _MISSING:
            shown = original(self, path)
            _put(_shown_paths, key, shown, FILES)
        return shown

    return _makepath


def _replace(owner, attribute: str, value) -> None:
    _installed.append((owner, attribute, owner.__dict__[attribute] if isinstance(owner, type)
                       else getattr(owner, attribute)))
    setattr(owner, attribute, value)


def install() -> bool:
    """Make pytest's traceback formatting look each thing up once (idempotent); False where this
    pytest's `_pytest._code` is not as expected in some part, which is then left as it is."""
    if _installed:
        return _complete
    return _install()


_complete = False


def _install() -> bool:
    global _complete
    try:
        from _pytest._code import code, source
    except ImportError:
        return False
    complete = True
    original: Callable | None = getattr(source, "getstatementrange_ast", None)
    expected = False
    if getattr(code, "getstatementrange_ast", None) is original and original is not None:
        try:
            expected = list(inspect.signature(original).parameters) == _EXPECTED_PARAMS
        except (TypeError, ValueError):
            pass
    if expected:
        wrapper = _cached(original)
        # code.py imported the name; source.py's Source.getstatementrange looks it up in its own module.
        _replace(code, "getstatementrange_ast", wrapper)
        _replace(source, "getstatementrange_ast", wrapper)
    else:
        complete = False
    code_class = getattr(code, "Code", None)
    source_class = getattr(source, "Source", None)
    findsource = _lines_only(source.findsource) if hasattr(source, "findsource") else None
    for name, make in (("path", _path_property),
                       ("fullsource", lambda get, doc: _fullsource_property(get, doc, source_class, findsource))):
        prop = getattr(code_class, "__dict__", {}).get(name)
        if isinstance(prop, property) and prop.fget is not None and source_class is not None:
            _replace(code_class, name, make(prop.fget, prop.__doc__))
        else:
            complete = False
    formatter = getattr(code, "ExceptionInfoFormatter", None) or getattr(code, "FormattedExcinfo", None)
    makepath = getattr(formatter, "__dict__", {}).get("_makepath")
    try:
        expected = callable(makepath) and list(inspect.signature(makepath).parameters) == ["self", "path"]
    except (TypeError, ValueError):
        expected = False
    if expected:
        _replace(formatter, "_makepath", _cached_makepath(makepath))
    else:
        complete = False
    if getattr(code, "extract_tb", None) is traceback.extract_tb:
        _replace(code, "extract_tb", _cached_extract_tb(traceback.extract_tb))
    else:
        complete = False
    _complete = complete
    return complete


def uninstall() -> None:
    """Give pytest back its own look-ups (for tests that compare with them) and forget what was kept."""
    global _complete
    while _installed:
        owner, attribute, value = _installed.pop()
        setattr(owner, attribute, value)
    _complete = False
    clear()


@contextlib.contextmanager
def plain():
    """pytest's own look-ups for the duration (reinstalled after, if they were installed)."""
    was = bool(_installed)
    uninstall()
    try:
        yield
    finally:
        if was:
            install()


def clear() -> None:
    """Forget every kept AST, path, source and frame summary."""
    with _lock:
        for cache in (_asts, _paths, _sources, _summaries, _shown_paths):
            cache.clear()
