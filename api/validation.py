"""Validation errors as the client sent the request, not as pydantic walked its types.

FastAPI reports a body typed ``Event | list[Event]`` (``POST /v1/events``) with both branches of
the union and their internal names (``body.tagged-union[RatingEvent,...].rating.rating``, and
``body.list[...]: Input should be a valid list`` for a single event). A client needs the field
it sent and the rule: ``rating: Input should be less than or equal to 5, got 7`` for one event,
``events[1].item_id: Field required`` for a list.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

# Path components pydantic adds for validators and unions; the client never wrote them.
_INTERNAL_PREFIXES = ("tagged-union[", "function-after[", "function-before[", "function-wrap[")
# The "this branch does not apply" errors of an object-or-list union.
_WRONG_BRANCH = {"list_type", "model_attributes_type", "dict_type", "model_type"}
_WHERE = ("body", "query", "path", "header", "cookie")


def readable_errors(errors: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The errors of the branch the client meant, each with ``field`` as the client sees it."""
    kept = [e for e in errors if not _other_branch(e, errors)] or list(errors[:1])
    return [{"field": _field(e), "msg": _message(e), "type": e.get("type", "")} for e in kept]


def describe(errors: Sequence[dict[str, Any]]) -> str:
    """One line per broken rule: ``rating: Input should be less than or equal to 5, got 7``."""
    return "; ".join(f"{e['field']}: {e['msg']}" for e in readable_errors(errors))


def field_name(loc: Sequence[Any]) -> str:
    """``events[3].item_id``, ``rating``, ``k``: the location without pydantic's internals."""
    parts: list[str] = []
    after_union = tagged_items = False
    for position, step in enumerate(loc):
        text = str(step)
        if position == 0 and text in _WHERE:  # where the value came from, not a field
            continue
        if text.startswith(_INTERNAL_PREFIXES):
            after_union = text.startswith("tagged-union[")
            continue
        if after_union:  # the union's tag (the event's type), not a field
            after_union = False
            continue
        if text.startswith("list["):
            parts.append("events")
            tagged_items = text.startswith("list[tagged-union[")
        elif isinstance(step, int):
            parts.append(f"{parts.pop() if parts else 'events'}[{step}]")
            after_union, tagged_items = tagged_items, False  # next: the item's tag
        else:
            parts.append(text)
    return ".".join(parts) or "body"


def _field(error: dict[str, Any]) -> str:
    name = field_name(error.get("loc", ()))
    if error.get("type") in ("union_tag_invalid", "union_tag_not_found"):
        return "type" if name == "body" else f"{name}.type"  # the tag names the event type
    return name


def _other_branch(error: dict[str, Any], errors: Sequence[dict[str, Any]]) -> bool:
    """An error saying the body is not the *other* shape of an object-or-list union, while the
    body's own shape has errors of its own."""
    loc = tuple(error.get("loc", ()))
    if error.get("type") not in _WRONG_BRANCH or len(loc) != 2:
        return False
    return any(tuple(e.get("loc", ()))[:2] != loc for e in errors)


def _message(error: dict[str, Any]) -> str:
    message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
    value = error.get("input")
    if error.get("type") != "missing" and isinstance(value, int | float | str) and value != "":
        # JSON strings are quoted as sent; query and path values are text anyway.
        in_body = tuple(error.get("loc", ("body",)))[:1] == ("body",)
        shown = repr(value) if isinstance(value, str) and in_body else str(value)
        if len(shown) <= 40:
            return f"{message}, got {shown}"
    return message
