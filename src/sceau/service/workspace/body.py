"""The request body of the vendor endpoints (``/cse``, ``/dke``): one bounded JSON object."""

from __future__ import annotations

from typing import Any

from fastapi import Request

from sceau.errors import InvalidRequest, PayloadTooLarge
from sceau.jose.guard import MalformedJson, strict_json_loads

__all__ = ["read_json_object"]


async def read_json_object(request: Request, *, limit: int, max_depth: int) -> dict[str, Any]:
    """The body as a JSON object; 413 as soon as it (or its declared length) is over
    ``limit`` bytes, ``invalid_request`` when it is not strict JSON or not an object."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise PayloadTooLarge(f"request body over {limit} bytes")
    raw = b""
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > limit:
            raise PayloadTooLarge(f"request body over {limit} bytes")
    try:
        value = strict_json_loads(raw, max_depth=max_depth)
    except MalformedJson:
        raise InvalidRequest("body: not valid JSON") from None
    if not isinstance(value, dict):
        raise InvalidRequest("body: not a JSON object")
    return value
