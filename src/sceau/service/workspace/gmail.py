"""Gmail client-side encryption: the KACLS's S/MIME endpoints under ``/cse`` (SPEC §11).

Who calls: Gmail's client (from the user's browser) with an authentication token from the
customer's identity provider and an authorization token from Google's Gmail issuer, for
``privatekeydecrypt`` and ``privatekeysign``; a ``cse_admin`` holder with an
authentication token alone for ``privilegedprivatekeydecrypt`` (Takeout exports) and
``wrapprivatekey``; anyone else on the internet, with whatever they can forge or replay.
What they must never obtain: a decryption or a signature with a mailbox's private key
unless they are that mailbox (or one of its Sceau authorizations), Google's token names
that very key (``spki_hash``) and the mailbox key is usable (SPEC §6); nor the private key
itself, which leaves Sceau only wrapped.

Data-centric mapping (docs/workspace.md): **one Sceau key per wrapped private key**, owned
by the mailbox's email, application ``google-workspace``, named
``gmail-smime/<email>/<spki hash>``. The wrapped private key (``kaclsData`` of the Gmail
key pair, held by Gmail, never stored here) is a SPEC §7 envelope of the PKCS#8 key under
that Sceau key, bound to the mailbox, the public key hash and the perimeter
(:mod:`sceau.core.workspace`). So an administrator disables, re-enables or crypto-shreds
one mailbox's S/MIME key like any Sceau key, from the console, the API or the CLI, and its
access listing shows every decryption and signature. The private key exists in memory only
during the one writer job that uses it.

Order of one call, cheapest first: the body (size, members, algorithm, base64), the
tokens (401), the checks between them and this KACLS (403: ``kacls_url``, role, email),
then one writer job: the mailbox key record (seal verified, application, name and owner
bound to the wrapped key's clear fields), Google's ``spki_hash`` and the perimeter against
the wrapped key, SPEC §6 for the caller, the envelope opened, the RSA operation, the use
counted and the audit record committed before the answer.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from cryptography.hazmat.primitives.asymmetric import rsa
from pydantic import StrictInt, StrictStr

from sceau.core.envelope import open_gcm, seal_gcm
from sceau.core.model import KeyRecord, Rules
from sceau.core.policy import Actor, require_use, validate_principal
from sceau.core.smime import (
    DECRYPT_ALGORITHMS,
    SIGN_ALGORITHMS,
    decrypt_key,
    pkcs8_der,
    private_key_from_pkcs8,
    sign_digest,
    spki_sha256,
)
from sceau.core.workspace import (
    MAX_PERIMETER_BYTES,
    SPKI_HASH_LEN,
    WrappedPrivateKey,
    mailbox_key_name,
    pack_wrapped_private_key,
    parse_wrapped_private_key,
    private_key_aad,
)
from sceau.errors import IntegrityFailure, InvalidRequest, InvalidToken
from sceau.keystore import Keystore
from sceau.service import keyops
from sceau.service.workspace.cse import (
    CSE_APPLICATION,
    MAX_REASON_BYTES,
    CallState,
    CseService,
    Handler,
    _b64_out,
    _b64_std,
    _Body,
    _details,
    _refuse,
)
from sceau.store.keys import insert_keys, save_key
from sceau.store.writer import Tx
from sceau.vocab import Action

__all__ = [
    "GMAIL_POSTS",
    "MAILBOX_LIFETIME_DAYS",
    "mailbox_email",
    "new_mailbox_key",
]

# A mailbox key protects every message ever encrypted to its certificate: it lives as long
# as the mail does. Disable or destroy it explicitly (as DKE keys).
MAILBOX_LIFETIME_DAYS = 36_500
DAY = 86_400
MAX_WRAPPED_PRIVATE_BYTES = 8 * 1024  # Google: wrapped_private_key, max 8 KB
MAX_EDEK_BYTES = 1024  # Google: encrypted_data_encryption_key, max 1 KB
MAX_DIGEST_BYTES = 128  # Google: digest, max 128 B
GMAIL_RESOURCE_BYTES = 512  # Google: resource_name of a Gmail authorization token
MAX_MESSAGE_ID_CHARS = 256
SPKI_ALGORITHM = "SHA-256"

# Google's roles for Gmail's authorization tokens.
ROLES: dict[str, frozenset[str]] = {
    "privatekeydecrypt": frozenset({"decrypter"}),
    "privatekeysign": frozenset({"signer"}),
}


# --- request bodies (Google's members) ---------------------------------------------------------


class PrivateKeyDecryptBody(_Body):
    authentication: StrictStr
    authorization: StrictStr
    algorithm: StrictStr
    encrypted_data_encryption_key: StrictStr
    wrapped_private_key: StrictStr
    rsa_oaep_label: StrictStr = ""


class PrivateKeySignBody(_Body):
    authentication: StrictStr
    authorization: StrictStr
    algorithm: StrictStr
    digest: StrictStr
    wrapped_private_key: StrictStr
    rsa_pss_salt_length: StrictInt | None = None


class PrivilegedPrivateKeyDecryptBody(_Body):
    authentication: StrictStr
    algorithm: StrictStr
    encrypted_data_encryption_key: StrictStr
    wrapped_private_key: StrictStr
    spki_hash: StrictStr
    spki_hash_algorithm: StrictStr = SPKI_ALGORITHM
    rsa_oaep_label: StrictStr = ""


class WrapPrivateKeyBody(_Body):
    authentication: StrictStr
    private_key: StrictStr
    perimeter_id: StrictStr = ""
    # Sceau's member (Google's page leaves the mailbox unnamed): whose key this is.
    # Absent: the calling admin's own.
    email: StrictStr = ""


# --- parsing ---------------------------------------------------------------------------------


def mailbox_email(email: str) -> str:
    """One mailbox's address, lower-cased as CSE compares emails; never a pattern."""
    if email.startswith("*") or "@" not in email:
        raise InvalidRequest("email: one mailbox's address is expected")
    return validate_principal(email).lower()


def _bounded(text: str, what: str, limit: int) -> bytes:
    if len(text) > (limit + 2) // 3 * 4:
        raise InvalidRequest(f"{what}: at most {limit} bytes")
    data = _b64_std(text, what)
    if not 0 < len(data) <= limit:
        raise InvalidRequest(f"{what}: 1 to {limit} bytes")
    return data


def _decrypt_algorithm(name: str) -> str:
    if name.upper() not in DECRYPT_ALGORITHMS:
        raise InvalidRequest("algorithm: RSA/ECB/PKCS1Padding or "
                             "RSA/ECB/OAEPwith<SHA-1|SHA-256|SHA-512>andMGF1Padding")
    return name


def _sign_algorithm(name: str) -> str:
    if name.upper() not in SIGN_ALGORITHMS:
        raise InvalidRequest("algorithm: SHA<256|384|512>withRSA, optionally with /PSS")
    return name


def _label(text: str) -> bytes | None:
    return _b64_std(text, "rsa_oaep_label") if text else None


def _wrapped(text: str) -> WrappedPrivateKey:
    return parse_wrapped_private_key(_bounded(text, "wrapped_private_key",
                                              MAX_WRAPPED_PRIVATE_BYTES))


def _spki(value: Any, algorithm: Any, *, token: bool) -> bytes:
    """Google's ``spki_hash`` (standard base64 of a SHA-256), from a token or a body."""
    bad = InvalidToken if token else InvalidRequest
    what = "authorization token spki_hash" if token else "spki_hash"
    if algorithm is not None and (not isinstance(algorithm, str)
                                  or algorithm.upper() != SPKI_ALGORITHM):
        raise bad(f"{what}_algorithm: only {SPKI_ALGORITHM} is supported")
    if not isinstance(value, str):
        raise bad(f"{what}: missing")
    try:
        digest = base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise bad(f"{what}: not base64") from None
    if len(digest) != SPKI_HASH_LEN:
        raise bad(f"{what}: not a SHA-256 digest")
    return digest


def _gmail_details(resource: str | None, perimeter: str | None, reason: str,
                   claims: Any = None) -> dict[str, Any]:
    details = _details(resource, perimeter, reason[:MAX_REASON_BYTES])
    message_id = claims.get("message_id") if claims is not None else None
    if isinstance(message_id, str):
        # Google: "used as client reason for auditing purposes".
        details["message_id"] = message_id[:MAX_MESSAGE_ID_CHARS]
    return details


def _describe(state: CallState, wrapped: WrappedPrivateKey) -> None:
    """What the audit record says of the key used, known from the clear fields already."""
    state.key = keyops.key_id_text(wrapped.header.key_id)
    details = state.details if state.details is not None else {}
    details["mailbox"] = wrapped.email
    details["spki_hash"] = _b64_out(wrapped.spki_hash)
    state.details = details


# --- the mailbox key ---------------------------------------------------------------------------


def new_mailbox_key(keystore: Keystore, tx: Tx, *, email: str, key: rsa.RSAPrivateKey,
                    perimeter_id: str, lifetime_days: int = MAILBOX_LIFETIME_DAYS
                    ) -> tuple[bytes, KeyRecord]:
    """A new Sceau key for ``email``'s private key, and that key wrapped under it.

    Runs inside a writer job (the API's ``wrapprivatekey``, ``sceau cse wrap-private-key``):
    the record, and the audit record naming it, commit together.
    """
    if len(perimeter_id.encode()) > MAX_PERIMETER_BYTES:
        raise InvalidRequest(f"perimeter_id: at most {MAX_PERIMETER_BYTES} bytes")
    spki = spki_sha256(key.public_key())
    now = tx.now
    record = keyops.new_key(
        keystore, owner=email, application=CSE_APPLICATION, now=now,
        expires_at=now + lifetime_days * DAY, name=mailbox_key_name(email, spki), tag=None,
        not_before=None, not_after=None, recipients=(), rules=Rules(),
    )
    tx.ctx.key = keyops.key_id_text(record.key_id)
    tx.ctx.details.update({"mailbox": email, "spki_hash": _b64_out(spki),
                           "perimeter_id": perimeter_id})
    data_key = keystore.derive(record.master_version, record.key_id, record.live_seed())
    envelope = seal_gcm(data_key, record.key_id, pkcs8_der(key),
                        private_key_aad(email, spki, perimeter_id))
    wrapped = pack_wrapped_private_key(email, spki, perimeter_id, envelope)
    if len(wrapped) > MAX_WRAPPED_PRIVATE_BYTES:
        raise InvalidRequest("private_key: too large to wrap within Gmail's 8 KB")
    insert_keys(tx.conn, [record])
    return wrapped, record


def open_mailbox_key(service: CseService, tx: Tx, wrapped: WrappedPrivateKey, *,
                     caller: str | None, spki: bytes, perimeter: str | None
                     ) -> rsa.RSAPrivateKey:
    """The private key inside ``wrapped``, after every check; the use is counted.

    ``caller``: whom SPEC §6 is applied to, the mailbox or one of its authorized
    principals (None: privileged, the key's owner stands in for steps 3 and 5 as in
    ``privilegedunwrap``). ``perimeter`` None: not checked (privileged).
    """
    rt = service.rt
    record = keyops.load_checked(tx.conn, rt.keystore, wrapped.header.key_id, for_update=True)
    if (record.application != CSE_APPLICATION or record.owner != wrapped.email
            or record.name != mailbox_key_name(wrapped.email, wrapped.spki_hash)):
        _refuse(tx, "wrapped_private_key", "the wrapped private key belongs to another key")
    if spki != wrapped.spki_hash:
        _refuse(tx, "spki_hash", "the wrapped private key is not the key Google named")
    if perimeter is not None and perimeter != wrapped.perimeter_id:
        _refuse(tx, "perimeter_id", "the wrapped private key belongs to another perimeter")
    subject = caller if caller is not None else record.owner
    require_use(record, Actor(CSE_APPLICATION, subject, tx.ctx.ip), tx.now)
    data_key = rt.keystore.derive(record.master_version, record.key_id, record.live_seed())
    try:
        der = open_gcm(data_key, wrapped.envelope, wrapped.aad)
    except IntegrityFailure:
        raise IntegrityFailure("wrapped_private_key does not authenticate") from None
    after = keyops.reseal(rt.keystore, record, bump=False, decryptions=record.decryptions + 1)
    save_key(tx.conn, record, after)
    return private_key_from_pkcs8(der)


# --- the endpoints -----------------------------------------------------------------------------


async def _user_call(service: CseService, body: Any, state: CallState, op: str
                     ) -> tuple[str, str, bytes, WrappedPrivateKey]:
    """Tokens and checks of the two user endpoints: (email, perimeter, spki, wrapped)."""
    wrapped = _wrapped(body.wrapped_private_key)
    email = await service.authenticate(body.authentication)
    state.email = email
    authz = await service.authorize(body.authorization)
    ident = service.check_authorization(authz, ROLES[op], email,
                                        max_resource=GMAIL_RESOURCE_BYTES)
    state.details = _gmail_details(ident.resource_name, ident.perimeter_id, body.reason,
                                   authz.claims)
    _describe(state, wrapped)
    spki = _spki(authz.claims.get("spki_hash"), authz.claims.get("spki_hash_algorithm"),
                 token=True)
    return email, ident.perimeter_id, spki, wrapped


async def privatekeydecrypt(service: CseService, body: PrivateKeyDecryptBody,
                            state: CallState) -> dict[str, Any]:
    algorithm = _decrypt_algorithm(body.algorithm)
    edek = _bounded(body.encrypted_data_encryption_key, "encrypted_data_encryption_key",
                    MAX_EDEK_BYTES)
    label = _label(body.rsa_oaep_label)
    email, perimeter, spki, wrapped = await _user_call(service, body, state,
                                                       "privatekeydecrypt")

    def job(tx: Tx) -> dict[str, Any]:
        key = open_mailbox_key(service, tx, wrapped, caller=email, spki=spki,
                               perimeter=perimeter)
        return {"data_encryption_key": _b64_out(decrypt_key(key, algorithm, edek, label))}

    return await service.run(state, job)


async def privatekeysign(service: CseService, body: PrivateKeySignBody,
                         state: CallState) -> dict[str, Any]:
    algorithm = _sign_algorithm(body.algorithm)
    digest = _bounded(body.digest, "digest", MAX_DIGEST_BYTES)
    email, perimeter, spki, wrapped = await _user_call(service, body, state, "privatekeysign")

    def job(tx: Tx) -> dict[str, Any]:
        key = open_mailbox_key(service, tx, wrapped, caller=email, spki=spki,
                               perimeter=perimeter)
        return {"signature": _b64_out(sign_digest(key, algorithm, digest,
                                                  body.rsa_pss_salt_length))}

    return await service.run(state, job)


async def privilegedprivatekeydecrypt(service: CseService,
                                      body: PrivilegedPrivateKeyDecryptBody,
                                      state: CallState) -> dict[str, Any]:
    """Takeout: a ``cse_admin`` decrypts without Google's ACL, not without the key's
    status, windows and rules (the owner stands in, as in ``privilegedunwrap``)."""
    algorithm = _decrypt_algorithm(body.algorithm)
    edek = _bounded(body.encrypted_data_encryption_key, "encrypted_data_encryption_key",
                    MAX_EDEK_BYTES)
    label = _label(body.rsa_oaep_label)
    spki = _spki(body.spki_hash, body.spki_hash_algorithm, token=False)
    wrapped = _wrapped(body.wrapped_private_key)
    email = await service.admin_email(body.authentication, state)
    state.details = _gmail_details(None, None, body.reason)
    _describe(state, wrapped)

    def job(tx: Tx) -> dict[str, Any]:
        service.check_admin(tx, email)
        key = open_mailbox_key(service, tx, wrapped, caller=None, spki=spki, perimeter=None)
        tx.ctx.details["perimeter_id"] = wrapped.perimeter_id
        return {"data_encryption_key": _b64_out(decrypt_key(key, algorithm, edek, label))}

    return await service.run(state, job)


async def wrapprivatekey(service: CseService, body: WrapPrivateKeyBody,
                         state: CallState) -> dict[str, Any]:
    """A ``cse_admin`` wraps a mailbox's private key (a new Sceau key, owned by it)."""
    from sceau.core.smime import load_private_key

    key = load_private_key(body.private_key)
    if len(body.perimeter_id.encode()) > MAX_PERIMETER_BYTES:
        raise InvalidRequest(f"perimeter_id: at most {MAX_PERIMETER_BYTES} bytes")
    mailbox = mailbox_email(body.email) if body.email else None
    admin = await service.admin_email(body.authentication, state)
    owner = mailbox or admin
    state.details = {"mailbox": owner, "perimeter_id": body.perimeter_id,
                     "reason": body.reason[:MAX_REASON_BYTES]}

    def job(tx: Tx) -> dict[str, Any]:
        service.check_admin(tx, admin)
        wrapped, _record = new_mailbox_key(service.rt.keystore, tx, email=owner, key=key,
                                           perimeter_id=body.perimeter_id)
        return {"wrapped_private_key": _b64_out(wrapped)}

    return await service.run(state, job)


GMAIL_POSTS: dict[str, tuple[Action, type[_Body], Handler]] = {
    "privatekeydecrypt": (Action.CSE_PRIVATE_KEY_DECRYPT, PrivateKeyDecryptBody,
                          privatekeydecrypt),
    "privatekeysign": (Action.CSE_PRIVATE_KEY_SIGN, PrivateKeySignBody,
                       privatekeysign),
    "privilegedprivatekeydecrypt": (Action.CSE_PRIVILEGED_PRIVATE_KEY_DECRYPT,
                                    PrivilegedPrivateKeyDecryptBody,
                                    privilegedprivatekeydecrypt),
    "wrapprivatekey": (Action.CSE_WRAP_PRIVATE_KEY, WrapPrivateKeyBody,
                       wrapprivatekey),
}
