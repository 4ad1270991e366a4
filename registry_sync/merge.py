"""Merging registries into one catalog and diffing catalogs: pure functions, no I/O."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import msgspec

from common import codec
from common.messages import CatalogEntry, CatalogMeta, RegistryStatus


class Diff(msgspec.Struct, frozen=True, kw_only=True):
    """Service ids added, removed and changed between two catalogs (in catalog order)."""

    added: list[str] = msgspec.field(default_factory=list)
    removed: list[str] = msgspec.field(default_factory=list)
    changed: list[str] = msgspec.field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.changed)

    def then(self, later: Diff) -> Diff:
        """This diff followed by ``later`` (used when a publish is retried on fresher state)."""
        added = _unique([*self.added, *later.added])
        removed = _unique([*self.removed, *later.removed])
        changed = _unique(i for i in [*self.changed, *later.changed] if i not in added and i not in removed)
        return Diff(added=added, removed=removed, changed=changed)


def merge(registries: Sequence[Sequence[CatalogEntry]], custom: Sequence[CatalogEntry]) -> list[CatalogEntry]:
    """premd's merge: registries in order, the first one defining an id wins; then custom services.

    A custom service shadows a registry service with the same id (premd: a service added through the API
    is already in its list when a registry is read, so the registry's copy is ignored).
    """
    taken = {entry.manifest.id for entry in custom}
    merged: list[CatalogEntry] = []
    for entries in registries:
        for entry in entries:
            if entry.manifest.id not in taken:
                taken.add(entry.manifest.id)
                merged.append(entry)
    merged.extend(custom)
    return merged


def encode_entries(entries: Iterable[CatalogEntry]) -> dict[str, bytes]:
    """Each entry's wire form by service id, in catalog order: the unit of change detection."""
    return {entry.manifest.id: codec.encode(entry) for entry in entries}


def diff(old: Mapping[str, bytes], new: Mapping[str, bytes]) -> Diff:
    return Diff(
        added=[sid for sid in new if sid not in old],
        removed=[sid for sid in old if sid not in new],
        changed=[sid for sid, value in new.items() if sid in old and old[sid] != value],
    )


def comparable(status: RegistryStatus) -> RegistryStatus:
    """A status without what a check renews (time, validators): a check alone is not a catalog change."""
    return msgspec.structs.replace(status, checked_at=None, etag=None, last_modified=None)


def meta_changed(meta: CatalogMeta | None, order: list[str], registries: Sequence[RegistryStatus]) -> bool:
    if meta is None:
        return True
    if meta.order != order or len(meta.registries) != len(registries):
        return True
    return any(comparable(a) != comparable(b) for a, b in zip(meta.registries, registries, strict=True))


def _unique(ids: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(ids))
