"""The error every package check raises."""

from __future__ import annotations

from common.errors import Code, InvalidError


class PackageInvalidError(InvalidError):
    """The package cannot be accepted; ``code`` is one of ``Code.PACKAGE_*`` and the message names the problem."""

    def __init__(self, code: Code, message: str) -> None:
        super().__init__(code, message)
