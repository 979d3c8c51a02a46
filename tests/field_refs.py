"""Which state-structure fields a suite test refers to, read from its source (no KVM needed).

tests/test_field_coverage.py holds suites/state/field_coverage.toml to this: a test named for a
field must refer to it. A test refers to a field path ("exception.pending", "cs.base") when its
source names every component of the path as one of:

- an attribute (`ev.exception.pending`, `sregs.cs.base`): how ctypes fields are read and written;
- a keyword argument (`expect_exit(MmioExit, phys_addr=...)`): how exits are matched by field;
- a word of a string constant that is only names separated by single spaces ("cr2",
  "rax rbx rcx"): the field lists a test hands to getattr or setattr.

Its source is the test function (decorators included, docstring not) and, followed transitively,
every function, class and constant of its own module that it names. Not counted: docstrings,
f-strings (failure messages and guest assembly: a guest reading CR2 itself is not KVM_GET_SREGS
reporting it), string subscripts (`record["cr2"]` reads a dict, not a KVM structure), comments,
and local variable names.
"""

import ast
import re
from functools import cache
from pathlib import Path

NAME_LIST = re.compile(r"[A-Za-z_]\w*( [A-Za-z_]\w*)*")


def _docstring_nodes(tree):
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and \
                    isinstance(first.value.value, str):
                out.add(id(first.value))
    return out


class ModuleRefs:
    """The top-level definitions of one suite module and the names each one uses."""

    def __init__(self, source: str):
        tree = ast.parse(source)
        self._skip = _docstring_nodes(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Subscript):
                self._skip |= {id(n) for n in ast.walk(node.slice) if isinstance(n, ast.Constant)}
            elif isinstance(node, ast.JoinedStr):
                self._skip |= {id(n) for n in ast.walk(node) if isinstance(n, ast.Constant)}
        self.defs = {}                      # top-level name -> its nodes (a name may be bound twice)
        for node in tree.body:
            for name in _bound_names(node):
                self.defs.setdefault(name, []).append(node)

    def _own(self, node):
        """(words that may name fields, module names used) directly in one top-level node."""
        words, used = set(), set()
        for n in ast.walk(node):
            if isinstance(n, ast.Attribute):
                words.add(n.attr)
            elif isinstance(n, ast.keyword) and n.arg:
                words.add(n.arg)
            elif isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in self._skip:
                if NAME_LIST.fullmatch(n.value):
                    words.update(n.value.split(" "))
            elif isinstance(n, ast.Name):
                used.add(n.id)
        return words, used

    def words(self, name: str) -> set[str]:
        """Every word that may name a field in `name`'s definition and what it uses in its module."""
        seen, todo, words = set(), [name], set()
        while todo:
            current = todo.pop()
            if current in seen or current not in self.defs:
                continue
            seen.add(current)
            for node in self.defs[current]:
                w, used = self._own(node)
                words |= w
                todo += sorted(used - seen)
        return words


def _bound_names(node):
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return [node.name]
    if isinstance(node, ast.Assign):
        return [n.id for t in node.targets for n in ast.walk(t) if isinstance(n, ast.Name)]
    if isinstance(node, (ast.AnnAssign, ast.AugAssign)) and isinstance(node.target, ast.Name):
        return [node.target.id]
    return []


@cache
def module_refs(path: Path) -> ModuleRefs:
    return ModuleRefs(path.read_text())


def suite_test_words(root: Path, node_id: str) -> set[str]:
    """The words of the suite test `node_id` ("suites/x/test_y.py::test_z")."""
    file, func = node_id.split("::")
    return module_refs(root / file).words(func)


def refers(words: set[str], path: str) -> bool:
    """Whether a test with these words refers to the field path ("exception.pending")."""
    return all(part in words for part in path.split("."))
