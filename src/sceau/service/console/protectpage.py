""""Protect a file": client-side file encryption in the browser, over the console session.

The page (``templates/protect.html`` with ``static/protect.js``) encrypts and decrypts files
with WebCrypto in the suite-2 STREAM format of ``sceau file`` (docs/format.md §4, the inner
file header of :mod:`sceau.connectors.files`); the file itself never reaches the service.
The two endpoints here only hand out data keys, exactly as the API's ``generate-data-key``
and ``get-data-key`` do: the same handlers run (``service/api/crypto.py``) as an
:class:`~sceau.core.policy.Actor` naming the application ``console`` and the
account's identity, so the key options, the SPEC §6 decision, the ``max_decryptions``
counter and the audit record (``GENERATE_DATA_KEY`` / ``GET_DATA_KEY``, app ``console``)
are the API's own.

Only ``user`` accounts reach the page: their account name is the identity the API uses.
``admin`` and ``auditor`` are operational roles (the admin never decrypts, SECURITY-CASES 21;
the auditor is read-only), so they get 403 here like on any page their role does not allow.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from sceau.errors import SceauError
from sceau.service.api import crypto
from sceau.service.console import web
from sceau.service.console.keyactions import session_actor
from sceau.service.params import GenerateDataKeyParams, GetDataKeyParams, parse_model
from sceau.store.writer import Tx
from sceau.vocab import Action, ErrorCode, Role

__all__ = ["router"]

# The data key travels in the body of this answer: no cache may keep it.
_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def _json(status: int, body: dict[str, Any]) -> JSONResponse:
    return JSONResponse(body, status_code=status, headers=_NO_STORE)


def _refusal(error: SceauError) -> JSONResponse:
    """A one-line refusal the page shows as is; 5xx details stay in the service log."""
    body: dict[str, Any] = {"code": error.code}
    if error.reason is not None:
        body["reason"] = str(error.reason)
        body["message"] = f"access denied ({error.reason})"
    elif error.code == ErrorCode.NOT_FOUND:
        body["message"] = "key not found (unknown to this service)"
    elif error.status >= 500:
        body["message"] = "the service cannot do this now"
    else:
        body["message"] = error.detail
    return _json(error.status, body)


def _session(console: web.Console, request: Request) -> web.Session | JSONResponse:
    """The signed-in ``user`` session with a valid CSRF token, or a JSON refusal."""
    try:
        return console.require(request, Role.USER)
    except web.PageError as error:
        return _json(error.status, {"code": "refused", "message": error.message})
    except web.Redirect:
        # Only a pending password change redirects a signed-in POST.
        return _json(403, {"code": "refused", "message": "Change your password first."})


def router(console: web.Console, route_class: type) -> APIRouter:
    r = APIRouter(prefix=web.PREFIX, route_class=route_class)

    @r.get("/protect")
    def protect_page(request: Request) -> Response:
        session = console.require(request, Role.USER)
        return console.render(request, "protect.html", session=session)

    @r.post("/protect/key")
    def new_data_key(request: Request) -> Response:
        """``generate-data-key`` for one file: a new key owned by the account."""
        session = _session(console, request)
        if isinstance(session, JSONResponse):
            return session
        form = web.form_of(request)
        recipients = [p.strip() for p in web.form_list(request, "recipient") if p.strip()]
        options: dict[str, Any] = {}
        if form.get("name"):
            options["name"] = form["name"]
        if recipients:
            options["recipients"] = recipients
        actor = session_actor(session)  # a user account: its own rights only

        def generate(tx: Tx) -> dict[str, Any]:
            # Parsed inside the job so a bad option is audited as a refusal, like the API's.
            params = parse_model(GenerateDataKeyParams, options)
            result = crypto.generate_data_key(console.rt, actor, params, tx)
            # iv and token serve suite-1 sealing; a STREAM draws its own salt.
            return {"key_id": result["key_id"], "key": result["key"]}

        try:
            value: dict[str, Any] = console.run(session, Action.GENERATE_DATA_KEY,
                                                generate).value
        except SceauError as error:
            return _refusal(error)
        return _json(200, value)

    @r.post("/protect/open-key")
    def existing_data_key(request: Request) -> Response:
        """``get-data-key`` for the key id read from a ``.sceau`` header."""
        session = _session(console, request)
        if isinstance(session, JSONResponse):
            return session
        key_id = web.form_of(request).get("key_id", "")
        actor = session_actor(session)  # a user account: its own rights only

        def fetch(tx: Tx) -> dict[str, Any]:
            params = parse_model(GetDataKeyParams, {"key_id": key_id})
            result: dict[str, Any] = crypto.get_data_key(console.rt, actor, params, tx)
            return result

        try:
            value: dict[str, Any] = console.run(session, Action.GET_DATA_KEY, fetch).value
        except SceauError as error:
            return _refusal(error)
        return _json(200, value)

    return r
