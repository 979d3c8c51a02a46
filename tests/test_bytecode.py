"""kvmtest.bytecode: with bytecode writing off, `kvmtest run` keeps it in a tree of its own."""

import os
import sys

import pytest

from kvmtest import bytecode


@pytest.fixture
def no_bytecode(monkeypatch, tmp_path):
    """An environment that says PYTHONDONTWRITEBYTECODE, with the cache under tmp_path."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setenv("PYTHONDONTWRITEBYTECODE", "1")
    monkeypatch.delenv("PYTHONPYCACHEPREFIX", raising=False)
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    monkeypatch.setattr(sys, "pycache_prefix", None)
    return tmp_path


def test_bytecode_off_is_turned_on_under_the_cache_prefix_for_this_process_and_its_children(no_bytecode):
    prefix = bytecode.keep_bytecode_outside_the_tree()
    assert prefix == no_bytecode / "kvmtest" / "pycache" and prefix.is_dir()
    assert (sys.dont_write_bytecode, sys.pycache_prefix) == (False, str(prefix))
    assert os.environ["PYTHONPYCACHEPREFIX"] == str(prefix) and "PYTHONDONTWRITEBYTECODE" not in os.environ


def test_an_explicit_prefix_is_left_alone(no_bytecode, monkeypatch):
    monkeypatch.setenv("PYTHONPYCACHEPREFIX", "/somewhere/else")
    assert bytecode.keep_bytecode_outside_the_tree() is None
    assert sys.dont_write_bytecode and os.environ["PYTHONDONTWRITEBYTECODE"] == "1"


def test_bytecode_already_on_is_left_alone(no_bytecode, monkeypatch):
    monkeypatch.setattr(sys, "dont_write_bytecode", False)
    monkeypatch.delenv("PYTHONDONTWRITEBYTECODE")
    assert bytecode.keep_bytecode_outside_the_tree() is None
    assert sys.pycache_prefix is None and "PYTHONPYCACHEPREFIX" not in os.environ


def test_a_cache_that_cannot_be_created_leaves_bytecode_off(no_bytecode):
    (no_bytecode / "kvmtest").write_text("a file where the directory would go")
    assert bytecode.keep_bytecode_outside_the_tree() is None
    assert sys.dont_write_bytecode and "PYTHONPYCACHEPREFIX" not in os.environ


def test_a_relative_xdg_cache_home_is_ignored(no_bytecode, monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", "rel")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert bytecode.cache_prefix() == tmp_path / "home" / ".cache" / "kvmtest" / "pycache"
