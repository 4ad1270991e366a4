"""Errors of the image side: raised at the build stage, carried as the package's failure reason."""

from __future__ import annotations

from common.errors import Code, ConflictError


class BuildError(ConflictError):
    """The image cannot be built as configured (``Code.BUILD_*``); the message says what to change."""

    def __init__(self, code: Code, message: str) -> None:
        super().__init__(code, message)
