"""Vocabularies of the protocol: every operation, error code, reason, right, role, status,
signing algorithm and audit action.

String literals for these values appear nowhere else in the code (STYLE example 7).
"""

from __future__ import annotations

from enum import StrEnum


class Op(StrEnum):
    """API operations (SPEC §4); the value is the `<op>` of `POST /v1/<op>`."""

    ENCRYPT = "encrypt"
    DECRYPT = "decrypt"
    GENERATE_DATA_KEY = "generate-data-key"
    GET_DATA_KEY = "get-data-key"
    DESCRIBE_KEY = "describe-key"
    LIST_KEYS = "list-keys"
    UPDATE_KEY = "update-key"
    ENABLE_KEY = "enable-key"
    DISABLE_KEY = "disable-key"
    DESTROY_KEY = "destroy-key"
    CANCEL_DESTRUCTION = "cancel-destruction"
    ADD_AUTHORIZATION = "add-authorization"
    REMOVE_AUTHORIZATION = "remove-authorization"
    ENABLE_AUTHORIZATION = "enable-authorization"
    DISABLE_AUTHORIZATION = "disable-authorization"
    LIST_ACCESSES = "list-accesses"

    @property
    def action(self) -> Action:
        """The audit action recorded for this operation."""
        return Action(self.value.upper().replace("-", "_"))


class Action(StrEnum):
    """Audit record actions (SPEC §8)."""

    ENCRYPT = "ENCRYPT"
    DECRYPT = "DECRYPT"
    GENERATE_DATA_KEY = "GENERATE_DATA_KEY"
    GET_DATA_KEY = "GET_DATA_KEY"
    DESCRIBE_KEY = "DESCRIBE_KEY"
    LIST_KEYS = "LIST_KEYS"
    UPDATE_KEY = "UPDATE_KEY"
    ENABLE_KEY = "ENABLE_KEY"
    DISABLE_KEY = "DISABLE_KEY"
    DESTROY_KEY = "DESTROY_KEY"
    CANCEL_DESTRUCTION = "CANCEL_DESTRUCTION"
    ADD_AUTHORIZATION = "ADD_AUTHORIZATION"
    REMOVE_AUTHORIZATION = "REMOVE_AUTHORIZATION"
    ENABLE_AUTHORIZATION = "ENABLE_AUTHORIZATION"
    DISABLE_AUTHORIZATION = "DISABLE_AUTHORIZATION"
    LIST_ACCESSES = "LIST_ACCESSES"
    # Refusals before the operation is known to be valid (bad token, replay, ...).
    REQUEST = "REQUEST"
    # Configuration and administration.
    APP_ADD = "APP_ADD"
    APP_UPDATE = "APP_UPDATE"
    APP_ENABLE = "APP_ENABLE"
    APP_DISABLE = "APP_DISABLE"
    APP_KEY_ADD = "APP_KEY_ADD"
    APP_KEY_RETIRE = "APP_KEY_RETIRE"
    ACCOUNT_CREATE = "ACCOUNT_CREATE"
    ACCOUNT_UPDATE = "ACCOUNT_UPDATE"
    # Separation of duties: a gated action waits for other admins (service/approvals.py).
    APPROVAL_REQUEST = "APPROVAL_REQUEST"
    APPROVAL_APPROVE = "APPROVAL_APPROVE"
    APPROVAL_REJECT = "APPROVAL_REJECT"
    CONSOLE_LOGIN = "CONSOLE_LOGIN"
    CONSOLE_LOGOUT = "CONSOLE_LOGOUT"
    CONSOLE_PASSWORD_CHANGE = "CONSOLE_PASSWORD_CHANGE"  # noqa: S105 (an action name)
    CONSOLE_SESSION = "CONSOLE_SESSION"
    ROWS_SEALED = "ROWS_SEALED"
    SERVICE_INIT = "SERVICE_INIT"
    SERVICE_START = "SERVICE_START"
    SERVICE_STOP = "SERVICE_STOP"
    KEYSTORE_ROTATE = "KEYSTORE_ROTATE"
    AUDIT_ARCHIVE = "AUDIT_ARCHIVE"
    AUDIT_EXPORT = "AUDIT_EXPORT"
    PURGE_EXPIRED = "PURGE_EXPIRED"
    # Workspace key services (SPEC §11).
    CSE_WRAP = "CSE_WRAP"
    CSE_UNWRAP = "CSE_UNWRAP"
    CSE_DIGEST = "CSE_DIGEST"
    CSE_PRIVILEGED_WRAP = "CSE_PRIVILEGED_WRAP"
    CSE_PRIVILEGED_UNWRAP = "CSE_PRIVILEGED_UNWRAP"
    CSE_REWRAP = "CSE_REWRAP"
    CSE_PRIVATE_KEY_DECRYPT = "CSE_PRIVATE_KEY_DECRYPT"
    CSE_PRIVATE_KEY_SIGN = "CSE_PRIVATE_KEY_SIGN"
    CSE_PRIVILEGED_PRIVATE_KEY_DECRYPT = "CSE_PRIVILEGED_PRIVATE_KEY_DECRYPT"
    CSE_WRAP_PRIVATE_KEY = "CSE_WRAP_PRIVATE_KEY"
    CSE_ADMIN_ADD = "CSE_ADMIN_ADD"
    CSE_ADMIN_REMOVE = "CSE_ADMIN_REMOVE"
    DKE_DECRYPT = "DKE_DECRYPT"
    DKE_KEY_CREATE = "DKE_KEY_CREATE"
    DKE_KEY_ENABLE = "DKE_KEY_ENABLE"
    DKE_KEY_DISABLE = "DKE_KEY_DISABLE"
    DKE_KEY_ROTATE = "DKE_KEY_ROTATE"
    DKE_KEY_RETIRE = "DKE_KEY_RETIRE"


class Outcome(StrEnum):
    """Audit outcome: GRANTED for 2xx, DENIED for 4xx, ERROR for 5xx (SPEC §10)."""

    GRANTED = "GRANTED"
    DENIED = "DENIED"
    ERROR = "ERROR"


class ErrorCode(StrEnum):
    """Stable error codes of problem responses (SPEC §3); :mod:`sceau.errors` maps each to
    its HTTP status."""

    INVALID_REQUEST = "invalid_request"
    INVALID_TOKEN = "invalid_token"  # noqa: S105 (an error code)
    TOKEN_EXPIRED = "token_expired"  # noqa: S105 (an error code)
    REPLAYED_REQUEST = "replayed_request"
    UNKNOWN_APPLICATION = "unknown_application"
    APPLICATION_DISABLED = "application_disabled"
    USER_NOT_ALLOWED = "user_not_allowed"
    ACCESS_DENIED = "access_denied"
    NOT_FOUND = "not_found"
    INTEGRITY_FAILURE = "integrity_failure"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    RATE_LIMITED = "rate_limited"
    INTERNAL_ERROR = "internal_error"
    AUDIT_UNAVAILABLE = "audit_unavailable"
    KEYSTORE_UNAVAILABLE = "keystore_unavailable"
    STORE_UNAVAILABLE = "store_unavailable"


class SigAlg(StrEnum):
    """JWS signing algorithms (RFC 7518, 8037). Each binds one key shape
    (:data:`sceau.core.jwk.KEY_SHAPE`); the lists of who may sign with which derive from it."""

    EDDSA = "EdDSA"
    ES256 = "ES256"
    PS256 = "PS256"
    RS256 = "RS256"


class Reason(StrEnum):
    """`access_denied` reasons (SPEC §3, §6)."""

    NOT_AUTHORIZED = "not_authorized"
    AUTHORIZATION_DISABLED = "authorization_disabled"
    KEY_DISABLED = "key_disabled"
    KEY_DESTROYED = "key_destroyed"
    KEY_EXPIRED = "key_expired"
    NOT_YET_VALID = "not_yet_valid"
    DATA_EXPIRED = "data_expired"
    NETWORK_NOT_ALLOWED = "network_not_allowed"
    MAX_DECRYPTIONS_REACHED = "max_decryptions_reached"
    KEY_PENDING_DESTRUCTION = "key_pending_destruction"


class Right(StrEnum):
    """Rights an authorization entry may carry."""

    DECRYPT = "decrypt"
    MANAGE = "manage"


class KeyStatus(StrEnum):
    """Stored key status (SPEC §5). `expired` is derived, see :class:`ListStatus`."""

    ACTIVE = "active"
    DISABLED = "disabled"
    PENDING_DESTRUCTION = "pending_destruction"
    DESTROYED = "destroyed"


class ListStatus(StrEnum):
    """Status filter and display status of `list-keys` (SPEC §10)."""

    ACTIVE = "active"
    DISABLED = "disabled"
    EXPIRED = "expired"
    PENDING_DESTRUCTION = "pending_destruction"
    DESTROYED = "destroyed"


class AuthorizationStatus(StrEnum):
    """Status of one authorization entry."""

    ACTIVE = "active"
    DISABLED = "disabled"


class AppStatus(StrEnum):
    """Status of a registered application."""

    ENABLED = "enabled"
    DISABLED = "disabled"


class AppKeyStatus(StrEnum):
    """Status of one application signing key, and of one version of a DKE key pair."""

    ACTIVE = "active"
    RETIRED = "retired"


class AccountStatus(StrEnum):
    """Status of a console account."""

    ACTIVE = "active"
    DISABLED = "disabled"


class Role(StrEnum):
    """Console account roles (SPEC §2)."""

    ADMIN = "admin"
    AUDITOR = "auditor"
    USER = "user"


class ListRole(StrEnum):
    """`list-keys` role filter."""

    OWNER = "owner"
    RECIPIENT = "recipient"
    ANY = "any"


class Gated(StrEnum):
    """Actions that could open a path to data: the console runs them only once other admins
    approved them (separation of duties, SECURITY-CASES 46); the host operator runs them
    with the CLI."""

    ACCOUNT_CREATE = "account-create"
    ACCOUNT_RESET = "account-reset"
    ACCOUNT_ROLE = "account-role"
    TOTP_CLEAR = "totp-clear"
    APP_ADD = "app-add"
    APP_USERS = "app-users"
    APP_KEY_ADD = "app-key-add"
    ADD_AUTHORIZATION = "add-authorization"
    ENABLE_AUTHORIZATION = "enable-authorization"
    CSE_ADMIN_ADD = "cse-admin-add"


class ApprovalStatus(StrEnum):
    """Stored status of an approval request; a pending one past its expiry is shown as
    ``expired`` and can no longer be approved."""

    PENDING = "pending"
    APPROVED = "approved"
    REJECTED = "rejected"
    EXPIRED = "expired"
