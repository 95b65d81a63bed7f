"""Numbers as JSON means them, for request and event fields.

Pydantic's lax mode reads ``true``/``false`` as 1/0 in number fields, which neither JSON nor
the published schema allow: ``NotBool`` refuses them. An integral float (``2.0``) stays a
valid integer, as JSON Schema's ``integer`` says.
"""

from __future__ import annotations

from pydantic import BeforeValidator


def _not_bool(value: object) -> object:
    if isinstance(value, bool):
        raise ValueError("a number is required, not a boolean")
    return value


NotBool = BeforeValidator(_not_bool)
