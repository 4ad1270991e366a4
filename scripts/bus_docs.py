"""Write docs/bus.md and docs/schemas/*.json from the code that defines the bus.

Subjects, streams and buckets come from common/subjects.py (names, and the docstring under each), commands
from the components' own endpoint lists (request type, reply type from the handler's annotation, summary from
its docstring), messages from common/messages.py through ``msgspec.json.schema``. tests/unit/test_bus_docs.py
fails when the files in the repository are not what this script writes, so the documentation cannot drift.

    python -m scripts.bus_docs          # rewrite the files
    python -m scripts.bus_docs --check  # exit 1 if they are stale
"""

from __future__ import annotations

import argparse
import ast
import inspect
import json
import sys
import typing
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import msgspec

from common import messages, subjects
from common.component import ServiceComponent
from common.errors import _KIND_BY_CODE, Code

ROOT = Path(__file__).resolve().parents[1]
BUS_MD = ROOT / "docs" / "bus.md"
SCHEMAS = ROOT / "docs" / "schemas"

# What travels where, for the subjects and buckets whose payload the code does not state next to the name.
# tests/unit/test_bus_docs.py checks that every stream, bucket and object store in subjects.py is listed here.
EVENT_PAYLOADS: dict[str, tuple[str, type[msgspec.Struct]]] = {
    "CATALOG_CHANGED": ("registry_sync", messages.CatalogChanged),
    "service_event": ("scheduler", messages.OperationEvent),
    # --- packages: pipeline ---
    "package_event": ("builder", messages.PackageEvent),
    "build_job": ("builder (on upload)", messages.BuildJob),
    "logs_subject": ("scheduler", messages.LogChunk),  # cli (issue 12)
}
KV_VALUES: dict[str, list[tuple[str, str, type[msgspec.Struct] | None]]] = {
    # bucket constant -> (key pattern, writer, value type; None: raw bytes or internal)
    "KV_CATALOG": [
        ("meta", "registry_sync", messages.CatalogMeta),
        ("svc.<service id>", "registry_sync", messages.CatalogEntry),
    ],
    "KV_REGISTRY_CONFIG": [("(registry_sync's own records)", "registry_sync", None)],
    "KV_DESIRED": [("<service id>", "scheduler", messages.DesiredState), ("_instance", "scheduler", None)],
    "KV_OBSERVED": [("<service id>", "scheduler", messages.ServiceState)],
    "KV_HOST": [("facts", "scheduler", messages.HostFacts)],
    # --- packages: pipeline ---
    "KV_PACKAGES": [("<package id>", "builder", messages.PackageRecord)],
}


@dataclass(frozen=True)
class Name:
    """A module-level name of subjects.py with the docstring written under it (or the function's)."""

    name: str
    value: str
    doc: str


def subject_names() -> list[Name]:
    tree = ast.parse(Path(inspect.getfile(subjects)).read_text())
    found: list[Name] = []
    body = tree.body
    for index, node in enumerate(body):
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            name = node.targets[0].id
            value = getattr(subjects, name, None)
            if not isinstance(value, str) or name.startswith("_"):
                continue
            doc = ""
            following = body[index + 1] if index + 1 < len(body) else None
            if (
                isinstance(following, ast.Expr)
                and isinstance(following.value, ast.Constant)
                and isinstance(following.value.value, str)
            ):
                doc = " ".join(following.value.value.split())
            found.append(Name(name, value, doc))
        elif isinstance(node, ast.FunctionDef) and not node.name.startswith("_"):
            doc = " ".join((ast.get_docstring(node) or "").split())
            args = ", ".join(f"<{arg.arg}>" for arg in node.args.args)
            found.append(Name(node.name, f"{node.name}({args})", doc))
    return found


@dataclass(frozen=True)
class Command:
    component: str
    subject: str
    request: type[Any]
    reply: type[Any]
    summary: str


def components() -> list[type[ServiceComponent]]:
    # The components are imported here only, by the documentation tool, never by each other.
    from builder.component import Builder
    from registry_sync.component import RegistrySync
    from scheduler.component import Scheduler

    return [RegistrySync, Scheduler, Builder]


class _Handlers:
    """Stands in for a component instance: endpoints() only names its handler methods, so no component is
    constructed (that would open a Docker client) just to list them."""

    def __init__(self, cls: type[ServiceComponent]) -> None:
        self._cls = cls

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cls, name).__get__(self)


def commands() -> list[Command]:
    found: list[Command] = []
    subject_docs = {n.value: n.doc for n in subject_names()}
    for cls in components():
        for ep in cls.endpoints(cast(Any, _Handlers(cls))):
            hints = typing.get_type_hints(ep.handler)
            doc = inspect.getdoc(ep.handler) or ""
            summary = " ".join(doc.split("\n\n")[0].split()) or subject_docs.get(ep.subject, "")
            found.append(Command(cls.name, ep.subject, ep.request_type, hints.get("return", type(None)), summary))
    return found


def _link(type_: Any) -> str:
    name = getattr(type_, "__name__", str(type_))
    if isinstance(type_, type) and issubclass(type_, msgspec.Struct):
        return f"[`{name}`](schemas/{name}.json)"
    return f"`{name}`"


def message_types() -> list[type[msgspec.Struct]]:
    """Every Struct of common/messages.py, in the order written there."""
    found = [
        value
        for value in vars(messages).values()
        if isinstance(value, type)
        and issubclass(value, msgspec.Struct)
        and value.__module__ == messages.__name__
        and value is not messages.Message
    ]
    source = Path(inspect.getfile(messages)).read_text()
    return sorted(found, key=lambda t: source.find(f"class {t.__name__}("))


def schemas() -> dict[str, str]:
    """File name -> JSON Schema text, one file per message with the definitions it refers to."""
    out: dict[str, str] = {}
    for type_ in message_types():
        schema = msgspec.json.schema(type_)
        schema = {"$schema": "https://json-schema.org/draft/2020-12/schema", "title": type_.__name__, **schema}
        out[f"{type_.__name__}.json"] = json.dumps(schema, indent=2, sort_keys=True) + "\n"
    return out


def _table(header: Iterable[str], rows: Iterable[Iterable[str]]) -> list[str]:
    header = list(header)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return lines


def bus_md() -> str:
    names = {n.name: n for n in subject_names()}
    cmds = commands()
    out = [
        "# premd's bus, for other tools",
        "",
        "<!-- Generated by `python -m scripts.bus_docs` from common/subjects.py, common/messages.py and the",
        "components' endpoint lists; tests/unit/test_bus_docs.py fails when this file is stale. Do not edit. -->",
        "",
        "premd's components talk only over NATS, and so can your tools: every message is JSON, described by a",
        "JSON Schema in [`docs/schemas/`](schemas/). Commands are NATS micro-service requests (request/reply);",
        "events are published on subjects captured by a JetStream stream, so a tool can replay them from a",
        "sequence number; state lives in JetStream key-value buckets that a tool can read or watch.",
        "",
        "Connecting: the bus premd starts (`premd serve`) listens on loopback; security.md has the credentials",
        "of the read-only and operator roles other tools use.",
        "",
        "## Errors",
        "",
        "A command that fails answers with the NATS micro headers `Nats-Service-Error-Code` (a stable code below)",
        "and `Nats-Service-Error`, and an [`ErrorReply`](schemas/ErrorReply.json) body `{code, message}`.",
        "",
    ]
    out += _table(
        ["code", "kind (HTTP status class at the gateway)"],
        [(f"`{code.value}`", _KIND_BY_CODE.get(code, messages.Message).__name__) for code in Code],
    )
    out += [
        "",
        "## Discovery",
        "",
        "Every component is a NATS micro service: `$SRV.PING`, `$SRV.INFO` and `$SRV.STATS` (optionally followed",
        "by `.<component>`) give its instance id, version, endpoints and per-endpoint request, error and latency",
        "counts. Components: " + ", ".join(f"`{c}`" for c in subjects.COMPONENTS) + ".",
        "",
        "## Commands",
        "",
    ]
    out += _table(
        ["subject", "component", "request", "reply", "what it does"],
        [(f"`{c.subject}`", c.component, _link(c.request), _link(c.reply), c.summary) for c in cmds],
    )
    out += ["", "## Events", ""]
    stream = names.get("EVENTS_STREAM")
    if stream is not None:
        out.append(f"Stream `{stream.value}` captures `{names['EVENTS_ALL'].value}`; its sequence is the SSE id.")
        out.append("")
    out += _table(
        ["subject", "published by", "payload", "meaning"],
        [
            (f"`{names[key].value}`", who, _link(payload), names[key].doc)
            for key, (who, payload) in EVENT_PAYLOADS.items()
            if key in names
        ],
    )
    filters = [n for n in names.values() if n.name.endswith("_filter") or n.value.endswith(">")]
    out += ["", "Filters:", ""]
    out += [f"- `{n.value}`: {n.doc}".rstrip(": ") for n in filters]
    out += ["", "## Key-value buckets and object stores", ""]
    rows = []
    for key, entries in KV_VALUES.items():
        if key not in names:
            continue
        for pattern, writer, value in entries:
            rows.append(
                (f"`{names[key].value}`", f"`{pattern}`", writer, _link(value) if value else "—", names[key].doc)
            )
    for name in names.values():
        if name.name.startswith("OBJ_"):
            rows.append((f"`{name.value}` (object store)", "`<object name>`", "", "bytes", name.doc))
    out += _table(["bucket", "key", "written by", "value", "notes"], rows)
    out += [
        "",
        "## Examples with the `nats` CLI",
        "",
        "```sh",
        "# every service in the catalog (the merged registries)",
        f"nats kv ls {subjects.KV_CATALOG}",
        f"nats kv get {subjects.KV_CATALOG} svc.<service id> --raw",
        "# what runs: one ServiceState per service",
        f"nats kv watch {subjects.KV_OBSERVED}",
        "# start a service (operator role): replies with an OperationAccepted",
        f'nats request {subjects.SCHEDULER_START} \'{{"service_id": "<service id>"}}\'',
        "# follow events, replaying from the start of the stream",
        f"nats sub '{subjects.EVENTS_ALL}' --stream {subjects.EVENTS_STREAM} --all",
        "# which components answer, and their counters",
        "nats micro ls && nats micro stats scheduler",
        "```",
        "",
        "## Messages",
        "",
    ]
    for type_ in message_types():
        own = vars(type_).get("__doc__") or ""  # not an inherited docstring
        doc = " ".join(inspect.cleandoc(own).split("\n\n")[0].split())
        fields = ", ".join(f"`{f.encode_name}`" for f in msgspec.structs.fields(type_))
        out.append(f"- {_link(type_)}" + (f": {doc}" if doc else "") + (f" Fields: {fields}." if fields else ""))
    return "\n".join(out) + "\n"


def expected_files() -> dict[Path, str]:
    files = {BUS_MD: bus_md()}
    files.update({SCHEMAS / name: text for name, text in schemas().items()})
    return files


def stale() -> list[str]:
    """Paths that differ from what would be written, plus schema files that should not exist."""
    files = expected_files()
    wrong = [str(p.relative_to(ROOT)) for p, text in files.items() if not p.exists() or p.read_text() != text]
    if SCHEMAS.exists():
        wrong += [str(p.relative_to(ROOT)) for p in SCHEMAS.glob("*.json") if p not in files]
    return wrong


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="exit 1 when the files are stale")
    args = parser.parse_args(argv)
    if args.check:
        wrong = stale()
        for name in wrong:
            print(f"stale: {name} (run: python -m scripts.bus_docs)", file=sys.stderr)
        return 1 if wrong else 0
    files = expected_files()
    SCHEMAS.mkdir(parents=True, exist_ok=True)
    for old in SCHEMAS.glob("*.json"):
        if old not in files:
            old.unlink()
    for path, text in files.items():
        path.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
