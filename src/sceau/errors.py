"""One error root with stable codes (SPEC §3).

Every error Sceau raises on purpose derives from :class:`SceauError`. The class-level
``code`` is the stable protocol code; :data:`HTTP_STATUS` maps codes to HTTP statuses in
one place. Messages (``detail``) never carry key material, plaintext or secrets.
"""

from __future__ import annotations

from typing import Any, ClassVar

from sceau.vocab import ErrorCode, Reason


class SceauError(Exception):
    """Root of every Sceau error."""

    code: ClassVar[ErrorCode] = ErrorCode.INTERNAL_ERROR
    title: ClassVar[str] = "Internal error"

    def __init__(self, detail: str = "", *, reason: Reason | None = None) -> None:
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        self.reason = reason

    @property
    def status(self) -> int:
        """HTTP status for this error's code."""
        return HTTP_STATUS[self.code]

    @property
    def public_detail(self) -> str:
        """The detail a remote caller is told: ``detail``, or only the title for a 5xx.

        A backend failure's detail is for the operator: it can name a keystore file, a
        PKCS#11 module or a database host. Callers get the stable code and the title, the
        log gets the detail (with the request id).
        """
        return self.detail if self.status < 500 else self.title

    def diagnostics(self) -> str:
        """A one-paragraph human explanation, for the CLI."""
        text = f"{self.code}: {self.detail}"
        if self.reason is not None and str(self.reason) not in self.detail:
            text += f" (reason: {self.reason})"
        return text

    def problem(self, request_id: str | None = None) -> dict[str, Any]:
        """The RFC 9457 problem object for this error."""
        body: dict[str, Any] = {
            "type": f"urn:sceau:error:{self.code}",
            "title": self.title,
            "status": self.status,
            "code": self.code,
            "detail": self.public_detail,
            "request_id": request_id,
        }
        if self.reason is not None:
            body["reason"] = str(self.reason)
        return body


# --- caller input -------------------------------------------------------------------------


class CallerError(SceauError):
    """The caller sent something wrong."""


class InvalidRequest(CallerError):
    """`params` wrong: unknown member, wrong type, out of range, unparseable envelope."""

    code = ErrorCode.INVALID_REQUEST
    title = "Invalid request"


class InvalidToken(CallerError):
    """Anything wrong with the JOSE object or its claims."""

    code = ErrorCode.INVALID_TOKEN
    title = "Invalid token"


class TokenExpired(CallerError):
    """The request token is past `exp` plus the clock skew."""

    code = ErrorCode.TOKEN_EXPIRED
    title = "Token expired"


class ReplayedRequest(CallerError):
    """A `jti` already seen from the same application."""

    code = ErrorCode.REPLAYED_REQUEST
    title = "Replayed request"


class UnknownApplication(CallerError):
    """The `kid` names no registered application key."""

    code = ErrorCode.UNKNOWN_APPLICATION
    title = "Unknown application"


class PayloadTooLarge(CallerError):
    """Body, batch or plaintext over the configured limit."""

    code = ErrorCode.PAYLOAD_TOO_LARGE
    title = "Payload too large"


class RateLimited(CallerError):
    """The application exceeded its request rate."""

    code = ErrorCode.RATE_LIMITED
    title = "Rate limited"

    def __init__(self, detail: str = "", *, retry_after: int = 1) -> None:
        super().__init__(detail)
        self.retry_after = retry_after


class ConcurrentChange(CallerError):
    """The row changed between read and write (another admin, another node): try again."""

    code = ErrorCode.INVALID_REQUEST
    title = "Concurrent change"


# --- access ----------------------------------------------------------------------------------


class AccessError(SceauError):
    """The caller is identified but may not do this."""


class ApplicationDisabled(AccessError):
    code = ErrorCode.APPLICATION_DISABLED
    title = "Application disabled"


class UserNotAllowed(AccessError):
    code = ErrorCode.USER_NOT_ALLOWED
    title = "User not allowed"


class AccessDenied(AccessError):
    """Policy refused the access; ``reason`` says which check failed (SPEC §6)."""

    code = ErrorCode.ACCESS_DENIED
    title = "Access denied"

    def __init__(self, reason: Reason, detail: str = "") -> None:
        super().__init__(detail or f"access denied: {reason}", reason=reason)


class NotFound(AccessError):
    """No such key, or a key the caller may not see (same answer on purpose)."""

    code = ErrorCode.NOT_FOUND
    title = "Not found"


class BadCredentials(AccessError):
    """A password that does not match, or an unknown user (the same refusal on purpose)."""

    code = ErrorCode.ACCESS_DENIED
    title = "Bad credentials"


# --- integrity --------------------------------------------------------------------------------


class IntegrityFailure(SceauError):
    """A seal, signature or ciphertext does not verify."""

    code = ErrorCode.INTEGRITY_FAILURE
    title = "Integrity failure"


class DecryptionFailed(IntegrityFailure):
    """Opaque failure to open an envelope: bad tag, truncation, trailing data, reordering."""


# --- backends ----------------------------------------------------------------------------------


class BackendError(SceauError):
    """A dependency (store, audit, keystore) failed; the service fails closed."""

    code = ErrorCode.INTERNAL_ERROR
    title = "Internal error"


class AuditUnavailable(BackendError):
    code = ErrorCode.AUDIT_UNAVAILABLE
    title = "Audit trail unavailable"


class KeystoreUnavailable(BackendError):
    code = ErrorCode.KEYSTORE_UNAVAILABLE
    title = "Keystore unavailable"


class StoreUnavailable(BackendError):
    code = ErrorCode.STORE_UNAVAILABLE
    title = "Store unavailable"


class ConfigError(SceauError):
    """Bad configuration; the message names the setting."""

    code = ErrorCode.INTERNAL_ERROR
    title = "Configuration error"

    def diagnostics(self) -> str:
        return f"configuration: {self.detail}"


HTTP_STATUS: dict[ErrorCode, int] = {
    ErrorCode.INVALID_REQUEST: 400,
    ErrorCode.INVALID_TOKEN: 401,
    ErrorCode.TOKEN_EXPIRED: 401,
    ErrorCode.REPLAYED_REQUEST: 401,
    ErrorCode.UNKNOWN_APPLICATION: 401,
    ErrorCode.APPLICATION_DISABLED: 403,
    ErrorCode.USER_NOT_ALLOWED: 403,
    ErrorCode.ACCESS_DENIED: 403,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.INTEGRITY_FAILURE: 409,
    ErrorCode.PAYLOAD_TOO_LARGE: 413,
    ErrorCode.RATE_LIMITED: 429,
    ErrorCode.INTERNAL_ERROR: 500,
    ErrorCode.AUDIT_UNAVAILABLE: 503,
    ErrorCode.KEYSTORE_UNAVAILABLE: 503,
    ErrorCode.STORE_UNAVAILABLE: 503,
}

_BY_CODE: dict[str, type[SceauError]] = {}


def _register(cls: type[SceauError]) -> None:
    _BY_CODE.setdefault(cls.code, cls)
    for sub in cls.__subclasses__():
        _register(sub)


def error_for_code(code: str) -> type[SceauError]:
    """The most specific error class for a stable code (used by the SDK)."""
    if not _BY_CODE:
        for sub in SceauError.__subclasses__():
            _register(sub)
    return _BY_CODE.get(code, SceauError)


class InternalError(BackendError):
    """An unexpected failure; details go to the log, never to the caller."""

    code = ErrorCode.INTERNAL_ERROR
    title = "Internal error"


class ConcurrentUpdate(InternalError):
    """A key record changed between the job's read and its write (another node wrote it).

    The writer runs the job again on the current record (``sceau.store.writer``); a job
    that keeps losing the race fails as an internal error, as any unexpected failure does.
    """
