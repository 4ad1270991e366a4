"""Which file:// registries registry_sync may read."""

from __future__ import annotations

from pathlib import Path

from registry_sync.file_policy import FilePolicy


def test_only_the_allowed_directory_and_the_files_given_at_start(tmp_path: Path) -> None:
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    (allowed / "escape.json").symlink_to(tmp_path / "secret")
    given = tmp_path / "given.json"
    policy = FilePolicy(str(allowed), [given.as_uri(), "https://example.org/r.json"])
    assert policy.refusal(str(allowed / "r.json")) is None
    assert policy.refusal(str(allowed / "sub" / ".." / "r.json")) is None
    assert policy.refusal(str(given)) is None
    for path in (tmp_path / "secret", allowed / "escape.json", allowed / ".." / "x", Path(str(allowed) + "-twin/r")):
        assert policy.refusal(str(path)) is not None, path
    assert "invalid path" in (policy.refusal("/tmp/a\0b") or "")


def test_nothing_is_allowed_by_default(tmp_path: Path) -> None:
    assert "PREMD_REGISTRY_FILE_DIR is unset" in (FilePolicy(None, []).refusal(str(tmp_path / "r.json")) or "")
