"""From a verified request to a committed job: the operation table and the call sequence.

Order inside the job (one transaction, see the writer): remember the ``jti`` (replay, across
all nodes since the table is shared), check the application and the user it asserts (SPEC §6
step 1), parse ``params`` (``invalid_request`` naming the member), then the handler.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sceau.core.model import normalize_identity
from sceau.errors import InvalidRequest
from sceau.jose.request import VerifiedRequest
from sceau.service.api import crypto, keys
from sceau.service.api.context import Call
from sceau.service.params import parse_params
from sceau.service.runtime import Runtime, check_application
from sceau.store import applications
from sceau.store.writer import AuditContext, Job, Tx
from sceau.vocab import Op

Handler = Callable[[Call, Any, Tx], Any]

HANDLERS: dict[Op, Handler] = {
    Op.ENCRYPT: crypto.encrypt,
    Op.DECRYPT: crypto.decrypt,
    Op.GENERATE_DATA_KEY: crypto.generate_data_key,
    Op.GET_DATA_KEY: crypto.get_data_key,
    Op.DESCRIBE_KEY: keys.describe_key,
    Op.LIST_KEYS: keys.list_keys,
    Op.UPDATE_KEY: keys.update_key,
    Op.ENABLE_KEY: keys.enable_key,
    Op.DISABLE_KEY: keys.disable_key,
    Op.DESTROY_KEY: keys.destroy_key,
    Op.CANCEL_DESTRUCTION: keys.cancel_destruction,
    Op.ADD_AUTHORIZATION: keys.add_authorization,
    Op.REMOVE_AUTHORIZATION: keys.remove_authorization,
    Op.ENABLE_AUTHORIZATION: keys.enable_authorization,
    Op.DISABLE_AUTHORIZATION: keys.disable_authorization,
    Op.LIST_ACCESSES: keys.list_accesses,
}

# Results that carry plaintext key material always travel as JWE (SPEC §3).
KEY_MATERIAL_OPS = frozenset({Op.GENERATE_DATA_KEY, Op.GET_DATA_KEY})


def make_job(rt: Runtime, op: Op, request: VerifiedRequest, ip: str | None) -> Job:
    """The writer job for one verified API call."""
    user = normalize_identity(request.sub)
    ctx = AuditContext(action=op.action, app=request.app_id, user=user, ip=ip, req=request.jti)
    handler = HANDLERS[op]
    replay_until = request.exp + rt.config.limits.clock_skew_s

    def run(tx: Tx) -> Any:
        app = check_application(tx.conn, rt.app_keys, request.app_id, request.kid, user)
        if (op in KEY_MATERIAL_OPS or request.was_jwe) and app.enc_key is None:
            raise InvalidRequest(
                "this operation answers with a JWE and the application has no encryption key"
            )
        params = parse_params(op, request.params)
        if rt.should_touch(app.app_id, tx.now):
            applications.touch_application(tx.conn, app.app_id, tx.now)
        call = Call(rt=rt, app=app, user=user, ip=ip, jti=request.jti)
        return call, handler(call, params, tx)

    return Job(fn=run, ctx=ctx, jti=(request.app_id, request.jti, replay_until))
