"""From a verified request to a committed job: the operation table and the call sequence.

Order inside the job (one transaction, see the writer): remember the ``jti`` (replay, across
all nodes since the table is shared), check the application and the user it asserts (SPEC §6
step 1), parse ``params`` (``invalid_request`` naming the member), then the handler, which
acts as the request's :class:`~sceau.core.policy.Actor`.
"""

from __future__ import annotations

from typing import Any

from sceau.core.model import normalize_identity
from sceau.core.policy import Actor
from sceau.errors import InvalidRequest
from sceau.jose.request import VerifiedRequest
from sceau.service.api import crypto, keys
from sceau.service.api.context import Handler
from sceau.service.lifecycle import actor_job
from sceau.service.params import parse_params
from sceau.service.runtime import Runtime, check_application
from sceau.store import applications
from sceau.store.writer import Job, Tx
from sceau.vocab import Op

HANDLERS: dict[Op, Handler] = {
    Op.ENCRYPT: crypto.encrypt,
    Op.DECRYPT: crypto.decrypt,
    Op.GENERATE_DATA_KEY: crypto.generate_data_key,
    Op.GET_DATA_KEY: crypto.get_data_key,
    **keys.HANDLERS,
}

# Results that carry plaintext key material always travel as JWE (SPEC §3).
KEY_MATERIAL_OPS = frozenset({Op.GENERATE_DATA_KEY, Op.GET_DATA_KEY})


def make_job(rt: Runtime, op: Op, request: VerifiedRequest, ip: str | None) -> Job:
    """The writer job for one verified API call.

    Its value is ``(enc_key, result)``: the application's encryption key (None when it has
    none), read in the job's transaction, and the handler's result.
    """
    actor = Actor(app_id=request.app_id, user=normalize_identity(request.sub), ip=ip)
    handler = HANDLERS[op]
    replay_until = request.exp + rt.config.limits.clock_skew_s

    def run(tx: Tx) -> Any:
        enc_key = check_application(tx.conn, rt.app_keys, request.app_id, request.kid,
                                    actor.user)
        if (op in KEY_MATERIAL_OPS or request.was_jwe) and enc_key is None:
            raise InvalidRequest(
                "this operation answers with a JWE and the application has no encryption key"
            )
        params = parse_params(op, request.params)
        if rt.should_touch(request.app_id, tx.now):
            applications.touch_application(tx.conn, request.app_id, tx.now)
        return enc_key, handler(rt, actor, params, tx)

    return actor_job(actor, op.action, run, req=request.jti,
                     jti=(request.app_id, request.jti, replay_until))
