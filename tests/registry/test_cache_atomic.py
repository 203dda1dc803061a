"""The registry cache writes entries with :func:`medvit.io.atomic.atomic_dir` and never touches a folder
outside the cache root."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from medvit.errors import InputError
from medvit.registry import cache


class _Client:
    tracking_uri = "sqlite:///mlruns.db"  # a local store: local download locations are its own

    def get_model_version_download_uri(self, name, version):
        return "file:///nowhere"


@pytest.mark.parametrize("version", ["/outside", "../../../outside"])
def test_an_entry_outside_the_cache_is_refused(tmp_path, monkeypatch, version):
    monkeypatch.setenv("MEDVIT_CACHE", str(tmp_path / "cache"))
    victim = tmp_path / "outside"
    victim.mkdir()
    (victim / "keep.txt").write_text("keep")
    entry = cache.cache_root() / "reg" / "name" / version
    if version.startswith("/"):
        entry = victim
    mv = SimpleNamespace(name="name", version=version, source="s", tags={})
    with pytest.raises(InputError, match="inside the cache"):
        cache._download(_Client(), mv, entry, "models:/name/1")
    assert [p.name for p in victim.iterdir()] == ["keep.txt"]
