"""Pins: every Python requirement of a package names one exact version, so a build resolves the same today and
next year (the wheelhouse is then downloaded once and installed offline)."""

from __future__ import annotations

import re

import msgspec

# PEP 508 name, optional extras, "==" and an exact version (no wildcard), optional environment marker.
_PIN = re.compile(
    r"^(?P<name>[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?)\s*(?P<extras>\[[A-Za-z0-9._,\s-]*\])?"
    r"\s*==\s*(?P<version>[A-Za-z0-9][A-Za-z0-9.+!_-]*)\s*(?P<marker>;.*)?$"
)
_HASH_OPTION = re.compile(r"\s--hash=[A-Za-z0-9]+:[0-9a-fA-F]+")


class Pin(msgspec.Struct, frozen=True):
    name: str
    """Normalised (PEP 503): lower case, runs of ``-_.`` as ``-``."""
    version: str
    requirement: str
    """The requirement as written (without ``--hash`` options)."""


def normalise_name(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_pin(text: str) -> Pin | None:
    """``Pin`` of ``name==version`` (extras and markers allowed), or None when *text* is not one exact pin."""
    match = _PIN.match(text.strip())
    if match is None:
        return None
    return Pin(normalise_name(match.group("name")), match.group("version"), text.strip())


class RequirementsProblem(Exception):
    def __init__(self, line: int, message: str, unpinned: bool) -> None:
        super().__init__(message)
        self.line = line
        self.unpinned = unpinned


def parse_requirements(text: str) -> list[Pin]:
    """The pins of a requirements file; RequirementsProblem (with the line) on anything else.

    Comments, blank lines, line continuations and ``--hash`` options are understood; other pip options
    (``-r``, ``-e``, ``--index-url``, ...) and URL or path requirements are refused: the build installs offline
    from a wheelhouse resolved from the pins alone.
    """
    pins = []
    logical: list[tuple[int, str]] = []
    pending = ""
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        line = re.sub(r"(^|\s)#.*$", "", raw).rstrip()
        if not pending:
            start = number
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append((start, pending + line))
        pending = ""
    if pending.strip():
        logical.append((start, pending))
    for number, line in logical:
        requirement = _HASH_OPTION.sub("", " " + line).strip()
        if not requirement:
            continue
        if requirement.startswith("-"):
            option = requirement.split()[0]
            raise RequirementsProblem(
                number, f"pip option {option!r} is not supported (builds install offline from pinned packages)", False
            )
        if "://" in requirement or requirement.startswith((".", "/")) or " @ " in requirement:
            raise RequirementsProblem(number, f"{requirement!r}: URL and path requirements are not supported", False)
        pin = parse_pin(requirement)
        if pin is None:
            raise RequirementsProblem(
                number, f"{requirement!r} is not pinned to one version (write name==version)", True
            )
        pins.append(pin)
    return pins
