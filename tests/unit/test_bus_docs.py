"""docs/bus.md and docs/schemas/ are what scripts/bus_docs.py writes from the code: they cannot drift."""

from __future__ import annotations

import json

import jsonschema
import msgspec

from common import subjects
from common.messages import CatalogEntry, OperationEvent, StartService
from scripts import bus_docs


def test_the_bus_documentation_in_the_repository_is_current() -> None:
    assert bus_docs.stale() == [], "run: python -m scripts.bus_docs"


def test_every_bucket_stream_and_command_of_subjects_is_documented() -> None:
    buckets = [name for name in vars(subjects) if name.startswith("KV_")]
    assert set(buckets) == set(bus_docs.KV_VALUES), "say what each KV bucket holds in scripts/bus_docs.py"
    text = bus_docs.bus_md()
    for name in (*buckets, *(n for n in vars(subjects) if n.startswith("OBJ_")), "EVENTS_STREAM"):
        assert f"`{getattr(subjects, name)}" in text
    command_subjects = [
        value for name, value in vars(subjects).items() if isinstance(value, str) and value.startswith("premd.")
    ]
    documented = {command.subject for command in bus_docs.commands()}
    events = {subjects.CATALOG_CHANGED, subjects.EVENTS_ALL, subjects.SERVICE_EVENTS_ALL}
    events |= {subjects.PACKAGE_EVENTS_ALL, subjects.BUILD_JOBS_ALL}  # packages: event filter, job stream subjects
    events |= {subjects.LOGS_ALL}  # cli: followed log chunks (documented as logs_subject)
    assert set(command_subjects) - events <= documented


def test_the_schemas_accept_real_messages_and_refuse_bad_ones() -> None:
    schema = json.loads((bus_docs.SCHEMAS / "StartService.json").read_text())
    jsonschema.validate(json.loads(msgspec.json.encode(StartService(service_id="chat-x"))), schema)
    try:
        jsonschema.validate({"service_id": "../etc"}, schema)
    except jsonschema.ValidationError:
        pass
    else:
        raise AssertionError("a service id with a slash passed the schema")
    for type_ in (CatalogEntry, OperationEvent):
        assert (bus_docs.SCHEMAS / f"{type_.__name__}.json").exists()
