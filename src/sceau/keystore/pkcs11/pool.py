"""Sessions on a PKCS#11 token: a fixed pool, rebuilt after token errors.

A PKCS#11 session must not be used by two threads at once, and opening one per call is slow
on network HSMs, so sessions come from a fixed pool (a queue). Any token error makes the pool
rebuild itself (re-open, re-login, re-initialize the module if needed) and the call is
retried once; if that fails the caller gets :class:`KeystoreUnavailable` (SECURITY-CASES 31:
never a fallback to another keystore). The next call after a short pause tries again, so the
service recovers by itself when the token returns.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pkcs11
from pkcs11 import ObjectClass
from pkcs11.exceptions import (
    NoSuchKey,
    NoSuchToken,
    PinExpired,
    PinIncorrect,
    PinInvalid,
    PinLenRange,
    PinLocked,
    PKCS11Error,
    UserAlreadyLoggedIn,
)

from sceau.errors import ConfigError, KeystoreUnavailable
from sceau.keystore.base import KeystoreSettings

__all__ = ["Slot", "TokenPool"]

T = TypeVar("T")

_PIN_ERRORS = (PinIncorrect, PinInvalid, PinLenRange, PinLocked, PinExpired)


def _read_pin(settings: KeystoreSettings) -> str:
    """The user PIN from ``pin_file`` or the ``pin_env`` variable (never from config text)."""
    if settings.pin_file is not None:
        try:
            pin = settings.pin_file.read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as exc:
            raise KeystoreUnavailable(f"cannot read the PKCS#11 PIN file: {exc.strerror}") from None
        if pin:
            return pin
    if settings.pin_env:
        pin = os.environ.get(settings.pin_env, "")
        if pin:
            return pin
    raise KeystoreUnavailable(
        f"no PKCS#11 PIN: set ${settings.pin_env or 'SCEAU_PKCS11_PIN'} or keystore.pin_file"
    )


# python-pkcs11 calls C_Initialize(NULL), which tells the module that the application will not
# call it from several threads at once; SoftHSM2 then runs without its own locks (and aborts
# the process under concurrent calls). So every call into a module is serialized here. The
# lock is per loaded module, process-wide, because the loaded module itself is.
_MODULE_LOCKS: dict[str, threading.RLock] = {}
_MODULE_LOCKS_GUARD = threading.Lock()


def _module_lock(module: str) -> threading.RLock:
    with _MODULE_LOCKS_GUARD:
        return _MODULE_LOCKS.setdefault(os.path.realpath(module), threading.RLock())


class _Gate:
    """Many operations at once, or one pool rebuild alone (a readers-writer lock)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._active = 0
        self._exclusive = False

    @contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            while self._exclusive:
                self._cond.wait()
            self._active += 1
        try:
            yield
        finally:
            with self._cond:
                self._active -= 1
                self._cond.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            while self._exclusive:
                self._cond.wait()
            self._exclusive = True
            while self._active:
                self._cond.wait()
        try:
            yield
        finally:
            with self._cond:
                self._exclusive = False
                self._cond.notify_all()


@dataclass
class Slot:
    """One pooled session and the key handles found through it (handles are per session)."""

    session: Any
    generation: int
    keys: dict[tuple[ObjectClass, str], Any] = field(default_factory=dict)

    def key(self, cls: ObjectClass, label: str) -> Any | None:
        cached = self.keys.get((cls, label))
        if cached is None:
            try:
                cached = self.session.get_key(object_class=cls, label=label)
            except NoSuchKey:
                return None
            self.keys[(cls, label)] = cached
        return cached


class TokenPool:
    """Open, logged-in sessions on one token, rebuilt after token errors."""

    # After a failed rebuild, calls fail fast for this long before the next attempt, so that
    # a dead HSM is not hammered with C_Initialize by every request.
    retry_interval = 0.5
    # Longest wait for a free session before the call fails (503) instead of piling up.
    wait_timeout = 30.0

    def __init__(self, settings: KeystoreSettings) -> None:
        if not settings.pkcs11_module or not settings.pkcs11_token:
            raise ConfigError("the pkcs11 keystore needs keystore.pkcs11_module and pkcs11_token")
        self._module = settings.pkcs11_module
        self._label = settings.pkcs11_token
        self._size = settings.pool_size
        self._pin = _read_pin(settings)
        self._gate = _Gate()
        self._idle: queue.Queue[Slot] = queue.Queue()
        self._slots: list[Slot] = []
        self._login: Any | None = None
        self._token: Any | None = None
        self._generation = 0
        self._closed = False
        self._retry_after = 0.0
        # Set when the token answered but our objects were gone: plain re-opening is not
        # enough then, the module must re-read its token store.
        self._force_reinit = False
        self._call_lock = _module_lock(self._module)
        with self._call_lock:
            try:
                self._lib = pkcs11.lib(self._module)
            except (PKCS11Error, OSError) as exc:
                raise KeystoreUnavailable(f"cannot load the PKCS#11 module: {exc}") from None
        with self._gate.exclusive(), self._call_lock:
            self._rebuild()

    # -- building ------------------------------------------------------------------------

    def _discard(self) -> None:
        # Pool sessions were opened without a PIN, so closing them never logs the others out;
        # the login session is closed last.
        for slot in self._slots:
            with suppress(PKCS11Error):
                slot.session.close()
        self._slots = []
        self._idle = queue.Queue()
        if self._login is not None:
            with suppress(PKCS11Error):
                self._login.close()
        self._login = None
        self._token = None

    def _open(self) -> None:
        token = self._lib.get_token(token_label=self._label)
        try:
            login = token.open(user_pin=self._pin)
        except UserAlreadyLoggedIn:
            # PKCS#11 login state belongs to the process, not the session: another keystore
            # object of this process is logged in to the same token already.
            login = token.open()
        self._token, self._login = token, login
        self._generation += 1
        for _ in range(self._size):
            slot = Slot(token.open(), self._generation)
            self._slots.append(slot)
            self._idle.put(slot)

    def _rebuild(self) -> None:
        """Re-open everything; C_Finalize/C_Initialize the module if plain re-opening fails."""
        self._discard()
        try:
            try:
                if not self._force_reinit:
                    self._open()
                    return
            except _PIN_ERRORS:
                raise
            except PKCS11Error:
                self._discard()
            # A token that came back, or one created after this process loaded the module,
            # is only visible after re-initialization (SoftHSM2 behaves so; network HSM
            # clients commonly need it after a lost connection too).
            with suppress(PKCS11Error):
                self._lib.reinitialize()
            self._open()
            self._force_reinit = False
        except _PIN_ERRORS:
            self._discard()
            # No retry: every attempt with a wrong PIN brings the token closer to locking.
            raise KeystoreUnavailable("PKCS#11 login refused: wrong or locked PIN") from None
        except NoSuchToken:
            self._discard()
            self._retry_after = time.monotonic() + self.retry_interval
            raise KeystoreUnavailable(f"PKCS#11 token {self._label!r} not found") from None
        except PKCS11Error as exc:
            self._discard()
            self._retry_after = time.monotonic() + self.retry_interval
            raise KeystoreUnavailable(
                f"PKCS#11 token unavailable ({type(exc).__name__})"
            ) from None

    def _recover(self, generation: int) -> None:
        with self._gate.exclusive(), self._call_lock:
            if self._closed:
                raise KeystoreUnavailable("keystore is closed")
            if generation != self._generation and self._slots:
                return  # another thread rebuilt the pool already
            if time.monotonic() < self._retry_after:
                raise KeystoreUnavailable("PKCS#11 token unavailable")
            self._rebuild()

    def invalidate(self) -> None:
        """Drop every session: the token lost our objects. The next call rebuilds."""
        with self._gate.exclusive(), self._call_lock:
            self._discard()
            self._force_reinit = True
            self._retry_after = time.monotonic() + self.retry_interval

    # -- using -------------------------------------------------------------------------------

    def run(self, action: Callable[[Slot], T]) -> T:
        """Run ``action`` with a pooled session; rebuild and retry once after a token error."""
        for attempt in range(2):
            with self._gate.shared():
                if self._closed:
                    raise KeystoreUnavailable("keystore is closed")
                generation = self._generation
                if self._slots:
                    try:
                        slot = self._idle.get(timeout=self.wait_timeout)
                    except queue.Empty:
                        raise KeystoreUnavailable("no PKCS#11 session free in time") from None
                    generation = slot.generation
                    try:
                        with self._call_lock:
                            return action(slot)
                    except PKCS11Error:
                        pass  # rebuild below, then retry once
                    finally:
                        # Always given back, even broken: a thread waiting for a session must
                        # not wait forever; it fails on the stale one and joins the rebuild.
                        self._idle.put(slot)
            if attempt == 0:
                self._recover(generation)
        raise KeystoreUnavailable("PKCS#11 token unavailable")

    def run_rw(self, action: Callable[[Any], T]) -> T:
        """Run an administrative ``action`` in a fresh read/write session (not pooled)."""

        def in_rw_session(slot: Slot) -> T:
            # Same login state as the pool: the rw session needs no PIN of its own.
            with slot.session.token.open(rw=True) as session:
                return action(session)

        return self.run(in_rw_session)

    def mechanisms(self) -> set[Any]:
        """The token's mechanism list."""
        return self.run(lambda slot: set(slot.session.token.slot.get_mechanisms()))

    def close(self) -> None:
        with self._gate.exclusive(), self._call_lock:
            self._closed = True
            self._discard()
