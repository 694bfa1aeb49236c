"""What the mount service learns of its store while idle (``store/warm.py``) is used by the commands it
forks only while it is still true: a record while its file is the one parsed, a compiled module
while gc has not run since. Pure tier: a real store, real wheels, no venv, no mount."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.test_select_clean import wheelhouse
from venvfs.errors import StoreError
from venvfs.store import bytecode, gc
from venvfs.store.store import WARM_RECORDS, Store, keeping_records
from venvfs.store.warm import Warmer
from venvfs.store.wheel import ingest_wheel

TAG = sys.implementation.cache_tag


@pytest.fixture(autouse=True)
def forget_what_was_learnt() -> Iterator[None]:
    yield
    WARM_RECORDS.clear()
    bytecode.WARM_COMPILED.clear()


def _stored(store: Store, wheels: Path) -> list[str]:
    return sorted(ingest_wheel(store, whl)[0].key for whl in sorted(wheels.glob("*.whl")))


def _compile(store: Store, keys: list[str]) -> int:
    with store.writing():
        return bytecode.ensure_bytecode(store, [store.get_dist(k) for k in keys], SimpleNamespace(cache_tag=TAG),
                                        Path(sys.executable), show_progress=False)


def _learn(root: Path, warmer: Warmer | None = None) -> Warmer:
    warmer = warmer or Warmer(root)
    warmer.refresh()
    while warmer.pending():
        warmer.step()
    return warmer


def test_the_service_learns_the_registered_selections_and_its_commands_start_with_them(
        store: Store, tmp_path: Path) -> None:
    keys = _stored(store, wheelhouse(tmp_path / "wheels"))
    _compile(store, keys)
    store.register_venv("a" * 32, tmp_path / "v", {"interpreter": {"cache_tag": TAG}, "selection": keys[:2]},
                        checksum="x")
    warmer = _learn(store.root)
    assert set(WARM_RECORDS[store.root]) == set(keys[:2])  # what a registered venv selects, nothing else
    # Another venv of the same builds: nothing to learn again (every command changes the registry).
    store.register_venv("b" * 32, tmp_path / "w", {"interpreter": {"cache_tag": TAG}, "selection": keys[:2]},
                        checksum="x")
    warmer.refresh()
    assert not warmer.pending()
    store.register_venv("c" * 32, tmp_path / "x", {"interpreter": {"cache_tag": TAG}, "selection": keys},
                        checksum="x")
    warmer.refresh()
    assert warmer.pending()
    _learn(store.root, warmer)
    py = {f.digest for k in keys for f in store.get_dist(k).site_files() if f.path.endswith(".py")}
    assert py and bytecode.WARM_COMPILED[store.root].digests == {TAG: py}
    assert bytecode.WARM_COMPILED[store.root].whole == {TAG: set(keys)}
    command = Store.open(store.root, create=False)  # a forked command's own Store
    with keeping_records(command):
        assert command._records is not None and set(command._records) == set(keys)
        assert command.get_dist(keys[0]) is WARM_RECORDS[store.root][keys[0]][1]  # not parsed again


def test_after_gc_a_command_compiles_again_what_the_service_had_seen_compiled(store: Store, tmp_path: Path) -> None:
    """gc removes the bytecode of what no venv selects; the same builds stored again must be compiled
    again, though the service saw them compiled before: gc changed the epoch those facts hold for."""
    wheels = wheelhouse(tmp_path / "wheels")
    keys = _stored(store, wheels)
    assert _compile(store, keys) > 0
    store.register_venv("a" * 32, tmp_path / "v", {"interpreter": {"cache_tag": TAG}, "selection": keys},
                        checksum="x")
    _learn(store.root)
    assert bytecode.WARM_COMPILED[store.root].whole[TAG]
    store.registry_path("a" * 32).unlink()
    with store.collecting():
        report = gc.collect(store, {}, dry_run=False)
    assert report.bytecode > 0 and not list((store.root / "bytecode").glob("*/*/*.pyc"))
    command = Store.open(store.root, create=False)
    # A record the service parsed and gc removed is gone for the command too.
    with keeping_records(command), pytest.raises(StoreError, match="not in the store"):
        command.get_dist(keys[0])
    assert _stored(store, wheels) == keys
    assert _compile(store, keys) > 0
    assert list((store.root / "bytecode").glob("*/*/*.pyc"))


def test_the_service_learns_nothing_from_a_store_that_does_not_exist_yet(tmp_path: Path) -> None:
    warmer = Warmer(tmp_path / "nothing")
    warmer.refresh()
    assert not warmer.pending()


@pytest.mark.allow_warnings
def test_learning_that_fails_stops_learning_not_the_service(store: Store, tmp_path: Path,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    from venvfs.mount import service

    keys = _stored(store, wheelhouse(tmp_path / "wheels"))
    store.register_venv("a" * 32, tmp_path / "v", {"interpreter": {"cache_tag": TAG}, "selection": keys},
                        checksum="x")
    warmer = Warmer(store.root)
    service._learning(warmer, warmer.refresh)
    assert warmer.pending()

    def broken() -> None:
        raise RuntimeError("a bug in learning")

    service._learning(warmer, broken)  # returns: the service's loop goes on
    assert "learning the store failed" in caplog.text and not warmer.pending()
    store.register_venv("b" * 32, tmp_path / "w", {"interpreter": {"cache_tag": TAG}, "selection": keys},
                        checksum="x")
    warmer.refresh()
    assert not warmer.pending()
