"""``/openapi.json``: every operation's parameters and result, from the pydantic models.

The wire body is a JOSE object, so each operation documents its ``params`` (the JWS claim)
and ``result`` (the response claim) as vendor extensions next to the transport schema.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from pydantic import BaseModel

from sceau.errors import HTTP_STATUS
from sceau.service.params import PARAMS, result_model
from sceau.vocab import Op, Reason

PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["type", "title", "status", "code", "detail"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "code": {"type": "string", "enum": sorted(HTTP_STATUS)},
        "detail": {"type": "string"},
        "request_id": {"type": ["string", "null"]},
        "reason": {"type": "string", "enum": [r.value for r in Reason]},
    },
}


def _schema(model: type[BaseModel], defs: dict[str, Any]) -> dict[str, Any]:
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    defs.update(schema.pop("$defs", {}))
    return schema


@cache
def _document(service_id: str) -> dict[str, Any]:
    defs: dict[str, Any] = {"Problem": PROBLEM_SCHEMA}
    paths: dict[str, Any] = {}
    for op in Op:
        params_name = f"{PARAMS[op].__name__}"
        result_name = f"{result_model(op).__name__}"
        defs[params_name] = _schema(PARAMS[op], defs)
        defs[result_name] = _schema(result_model(op), defs)
        paths[f"/v1/{op.value}"] = {
            "post": {
                "operationId": op.value,
                "summary": f"{op.value} (JWS-signed request, SPEC §4)",
                "x-sceau-params": {"$ref": f"#/components/schemas/{params_name}"},
                "x-sceau-result": {"$ref": f"#/components/schemas/{result_name}"},
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/jose": {
                            "schema": {
                                "type": "string",
                                "description": "compact JWS (typ sceau-req+jwt), optionally in a "
                                "compact JWE; claim `params` follows x-sceau-params",
                            }
                        }
                    },
                },
                "responses": {
                    "200": {
                        "description": "compact JWS (typ sceau-resp+jwt) or JWE; claim `result` "
                        "follows x-sceau-result",
                        "content": {"application/jose": {"schema": {"type": "string"}}},
                    },
                    **{
                        str(status): {
                            "description": "RFC 9457 problem",
                            "content": {
                                "application/problem+json": {
                                    "schema": {"$ref": "#/components/schemas/Problem"}
                                }
                            },
                        }
                        for status in sorted(set(HTTP_STATUS.values()))
                    },
                },
            }
        }
    public = {
        "/.well-known/jwks.json": "the service's public keys",
        "/.well-known/sceau-configuration": "discovery document",
        "/healthz": "liveness",
        "/readyz": "readiness: 200 {status: ready}, or 503 {status: unavailable, problems} "
        "with problem classes only (selftest, keystore, store, audit); details in the log",
        "/metrics": "Prometheus metrics",
        "/openapi.json": "this document",
    }
    for path, summary in public.items():
        paths[path] = {"get": {"summary": summary, "responses": {"200": {"description": "OK"}}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "Sceau API", "version": "v1"},
        "servers": [{"url": service_id}],
        "paths": paths,
        "components": {"schemas": defs},
    }


def openapi_document(service_id: str) -> dict[str, Any]:
    return _document(service_id)
