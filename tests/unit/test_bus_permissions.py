"""Permissions derived from common/subjects.py: every name covered, each user only what its role needs."""

from __future__ import annotations

import os
import stat
import types
from pathlib import Path

import pytest

from common import subjects
from common.bus_permissions import UndeclaredName, classify, derive
from common.nats_auth import credentials_path, ensure_credentials, server_config


def module_with(**names: object) -> types.ModuleType:
    """A copy of common/subjects.py with more names, as another feature would add them."""
    fake = types.ModuleType("fake_subjects")
    fake.__dict__.update({k: v for k, v in vars(subjects).items() if not k.startswith("__")})
    fake.ACCESS = dict(subjects.ACCESS)  # type: ignore[attr-defined]
    fake.__dict__.update(names)
    return fake


def test_every_name_in_subjects_has_a_grant() -> None:
    names = classify()
    assert {r.name for r in names.resources} <= set(subjects.ACCESS)
    assert set(subjects.ACCESS) <= {r.name for r in names.resources}  # no grant for a name that is gone


def test_a_new_bucket_without_a_grant_is_refused_by_name() -> None:
    with pytest.raises(UndeclaredName, match=r"subjects\.KV_NEW"):
        derive(module_with(KV_NEW="premd_new"))
    with pytest.raises(UndeclaredName, match=r"subjects\.NEW_EVENTS"):
        derive(module_with(NEW_EVENTS="premd.evt.new.>"))


def test_a_new_bucket_with_a_grant_is_writable_by_its_owner_only() -> None:
    fake = module_with(KV_NEW="premd_new")
    fake.ACCESS["premd_new"] = subjects.Grant((subjects.BUILDER,), (subjects.GATEWAY,))
    perms = derive(fake)
    assert "$KV.premd_new.>" in perms[subjects.BUILDER].publish
    assert "$KV.premd_new.>" not in perms[subjects.GATEWAY].publish
    assert "$JS.API.CONSUMER.CREATE.KV_premd_new.>" in perms[subjects.GATEWAY].publish
    assert not any("premd_new" in s for s in perms[subjects.READER].publish)


def test_a_new_command_is_served_by_its_component_and_sent_by_the_gateway() -> None:
    perms = derive(module_with(BUILDER_BUILD="premd.builder.build"))
    assert "premd.builder.build" in perms[subjects.BUILDER].subscribe
    assert "premd.builder.build" in perms[subjects.GATEWAY].publish
    assert "premd.builder.build" in perms[subjects.OPERATOR].publish
    assert "premd.builder.build" not in perms[subjects.READER].publish


def test_roles() -> None:
    perms = derive()
    gateway, reader = perms[subjects.GATEWAY], perms[subjects.READER]
    assert not {f"$KV.{subjects.KV_OBSERVED}.>", f"$KV.{subjects.KV_CATALOG}.>"} & gateway.publish
    assert subjects.SCHEDULER_START in gateway.publish and subjects.SCHEDULER_START not in reader.publish
    assert not any(s.startswith(("premd.scheduler.", "premd.registry.", "$KV.", "$O.")) for s in reader.publish)
    assert perms[subjects.ADMIN].unrestricted and not reader.allow_responses
    for user, p in perms.items():  # each subscribes to its own inbox only
        assert [s for s in p.subscribe if s.startswith("_INBOX")] == [f"_INBOX_{user}.>"]


def test_credentials_are_private_and_stable(tmp_path: Path) -> None:
    first = ensure_credentials(tmp_path / "creds")
    assert stat.S_IMODE(os.stat(tmp_path / "creds").st_mode) == 0o700
    for user in subjects.USERS:
        assert stat.S_IMODE(os.stat(credentials_path(tmp_path / "creds", user)).st_mode) == 0o600
    assert ensure_credentials(tmp_path / "creds") == first  # generated once
    assert len({c.password for c in first.values()}) == len(subjects.USERS)
    assert first[subjects.READER].password not in repr(first[subjects.READER])
    config = server_config(first)
    assert all(c.password in config for c in first.values())
