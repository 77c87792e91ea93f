"""Engine errors shared by every layer (annotation, quality, web, API, simulator).

A refusal carries a stable ``code``, a human ``message`` and the HTTP status a web layer should
use, so the engines never import a web framework and the web layer maps every refusal the same
way (``web.app``'s ``EngineError`` handler).
"""

from __future__ import annotations


class EngineError(Exception):
    """A refusal the caller should show as-is: a stable ``code``, a human ``message`` and the
    HTTP status a web layer should use (the engine itself never imports a web framework)."""

    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code, self.message, self.status = code, message, status
