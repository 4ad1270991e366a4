"""Each bus user's permissions, derived in one place from the names and grants in common/subjects.py.

The nats-server enforces them (common/nats_auth.py writes them into its configuration): a component can
publish and subscribe only where its role needs to, whatever its code does.

JetStream is reached through subjects too, so reading a bucket means being allowed its stream's API
(``$JS.API.STREAM.INFO``, direct and message gets, creating the consumers a watch uses), its flow-control and
ack replies (``$JS.FC`` / ``$JS.ACK``), and one's own inbox, where the server delivers replies and pushed
messages. Every user has an inbox prefix of its own (``_INBOX_<user>``), so nobody can subscribe to another's.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Literal

from common import subjects

Kind = Literal["kv", "obj", "stream", "subject"]


class UndeclaredName(RuntimeError):
    """A name in common/subjects.py that no grant covers: nobody could use it on an authorized bus."""


@dataclass(frozen=True, slots=True)
class Resource:
    constant: str
    name: str
    kind: Kind

    @property
    def stream(self) -> str | None:
        """The JetStream stream holding it (KV and object-store buckets are streams with a prefix)."""
        return {"kv": f"KV_{self.name}", "obj": f"OBJ_{self.name}", "stream": self.name}.get(self.kind)

    @property
    def content(self) -> tuple[str, ...]:
        """Subjects its content is published on."""
        return {"kv": (f"$KV.{self.name}.>",), "obj": (f"$O.{self.name}.>",), "subject": (self.name,)}.get(
            self.kind, ()
        )


@dataclass(slots=True)
class Permissions:
    """Allow lists (NATS wildcards); ``unrestricted`` users get no permissions block at all."""

    publish: set[str] = field(default_factory=set)
    subscribe: set[str] = field(default_factory=set)
    allow_responses: bool = False
    unrestricted: bool = False


def inbox_prefix(user: str) -> str:
    """The user's own inbox prefix (its clients connect with it; nobody else may subscribe under it)."""
    return f"_INBOX_{user}"


@dataclass(frozen=True, slots=True)
class Names:
    resources: tuple[Resource, ...]
    commands: dict[str, str]
    """command subject -> the component serving it"""


def classify(module: ModuleType = subjects) -> Names:
    """Every bus name defined in ``module``; raises UndeclaredName for one without a grant."""
    resources: list[Resource] = []
    commands: dict[str, str] = {}
    missing: list[str] = []
    for constant, value in vars(module).items():
        if not constant.isupper() or constant.startswith("_") or not isinstance(value, str):
            continue
        served_by = next((c for prefix, c in module.COMMAND_PREFIXES.items() if value.startswith(prefix)), None)
        kind: Kind | None
        if served_by is not None and value not in module.ACCESS:  # granted: a stream's subject, not a command
            commands[value] = served_by
            continue
        if value.startswith(f"{module.PREFIX}_"):
            kind = "kv" if constant.startswith("KV_") else "obj" if constant.startswith("OBJ_") else None
            if kind is None:
                raise UndeclaredName(f"subjects.{constant}: name a bucket constant KV_... or OBJ_...")
        elif value.startswith(f"{module.PREFIX.upper()}_"):
            kind = "stream"
        elif value.startswith(f"{module.PREFIX}."):
            kind = "subject"
        else:
            continue  # not a bus name: a component name, a key, a prefix, a $SRV subject
        if value not in module.ACCESS:
            missing.append(constant)
        resources.append(Resource(constant, value, kind))
    if missing:
        raise UndeclaredName(
            f"no grant for {', '.join('subjects.' + m for m in missing)}: say who writes and who reads it "
            "in subjects.ACCESS (the bus refuses everyone a name without one)"
        )
    return Names(tuple(resources), commands)


def _stream_reads(stream: str) -> Iterable[str]:
    api = "$JS.API"
    yield f"{api}.STREAM.INFO.{stream}"
    yield f"{api}.STREAM.MSG.GET.{stream}"
    yield f"{api}.DIRECT.GET.{stream}"
    yield f"{api}.DIRECT.GET.{stream}.>"
    yield f"{api}.CONSUMER.CREATE.{stream}"
    yield f"{api}.CONSUMER.CREATE.{stream}.>"
    yield f"{api}.CONSUMER.DURABLE.CREATE.{stream}.>"
    yield f"{api}.CONSUMER.INFO.{stream}.>"
    yield f"{api}.CONSUMER.DELETE.{stream}.>"
    yield f"{api}.CONSUMER.MSG.NEXT.{stream}.>"
    yield f"$JS.FC.{stream}.>"
    yield f"$JS.ACK.{stream}.>"


def _stream_writes(stream: str) -> Iterable[str]:
    # Purging: an object-store put drops the previous chunks; KV compaction.
    yield f"$JS.API.STREAM.PURGE.{stream}"
    yield f"$JS.API.STREAM.MSG.DELETE.{stream}"


def derive(module: ModuleType = subjects) -> dict[str, Permissions]:
    """Every bus user's permissions (module.USERS), from ``module``'s names and grants."""
    names = classify(module)
    perms = {user: Permissions() for user in module.USERS}
    perms[module.ADMIN].unrestricted = True
    for user, p in perms.items():
        p.subscribe.add(f"{inbox_prefix(user)}.>")
        # Account info, and stream names: a subscription given only a subject (an object-store read) asks
        # which stream holds it. Neither reveals any content.
        p.publish.update(("$JS.API.INFO", "$JS.API.STREAM.NAMES"))
    streams = [r.stream for r in names.resources if r.stream is not None]
    for component in module.COMPONENTS:
        p = perms[component]
        p.allow_responses = True  # answer the requests it receives (commands, $SRV discovery)
        for srv in (module.SRV_PING, module.SRV_INFO, module.SRV_STATS):
            p.subscribe.update((srv, f"{srv}.{component}", f"{srv}.{component}.>"))
        for stream in streams:  # every component ensures premd's streams exist at start (first one creates)
            p.publish.update((f"$JS.API.STREAM.INFO.{stream}", f"$JS.API.STREAM.CREATE.{stream}"))
    for user in (module.GATEWAY, module.READER, module.OPERATOR):
        perms[user].publish.update((f"{module.SRV_PING}.>", module.SRV_PING, module.SRV_INFO, f"{module.SRV_INFO}.>"))
        perms[user].publish.update((module.SRV_STATS, f"{module.SRV_STATS}.>"))
    for user in (module.READER, module.OPERATOR):  # what the nats CLI's listings ask
        perms[user].publish.add("$JS.API.STREAM.LIST")
    for subject, component in names.commands.items():
        perms[component].subscribe.add(subject)
        for sender in module.COMMAND_SENDERS:
            perms[sender].publish.add(subject)
    for resource in names.resources:
        grant = module.ACCESS[resource.name]
        for user in {*grant.readers, *grant.writers}:
            p = perms[user]
            if resource.stream is not None:
                p.publish.update(_stream_reads(resource.stream))
            if resource.kind == "subject":
                p.subscribe.add(resource.name)
        for user in grant.writers:
            p = perms[user]
            p.publish.update(resource.content)
            if resource.stream is not None:
                p.publish.update(_stream_writes(resource.stream))
    return perms
