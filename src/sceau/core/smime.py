"""The RSA operations of Gmail's S/MIME endpoints (SPEC §11): no I/O, no clock.

Gmail hands the KACLS a wrapped private key and asks for one of two operations with it:

* decrypt the content-encryption key of a message (``privatekeydecrypt``), named by Java's
  cipher names: ``RSA/ECB/PKCS1Padding`` (RSAES-PKCS1-v1_5, what S/MIME key transport
  uses) or ``RSA/ECB/OAEPwith<SHA-1|SHA-256|SHA-512>andMGF1Padding`` (RSAES-OAEP, the
  same hash for OAEP and MGF1, optional label);
* sign a digest the client computed over the DER ``SignedAttributes``
  (``privatekeysign``), named ``SHA<256|384|512>withRSA`` (RSASSA-PKCS1-v1_5) or with a
  ``/PSS`` suffix (RSASSA-PSS, MGF1 with the same hash, salt ``rsa_pss_salt_length``,
  default the digest's length). SHA-1 signatures are refused: a signature is a promise
  that must not be forgeable by a collision.

Every decryption failure is the same opaque :class:`~sceau.errors.DecryptionFailed`, so
the answer never says which padding check failed. Keys are RSA, 2048 to 4096 bits.
"""

from __future__ import annotations

import base64
import binascii
import hashlib

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import NameOID

from sceau.errors import DecryptionFailed, IntegrityFailure, InvalidRequest

__all__ = [
    "DECRYPT_ALGORITHMS",
    "MAX_RSA_BITS",
    "MIN_RSA_BITS",
    "SIGN_ALGORITHMS",
    "certificate_emails",
    "decrypt_key",
    "load_chain",
    "load_private_key",
    "pkcs7_pem",
    "pkcs8_der",
    "private_key_from_pkcs8",
    "sign_digest",
    "spki_sha256",
]

MIN_RSA_BITS = 2048
MAX_RSA_BITS = 4096

# Java cipher name (upper-cased) -> OAEP hash, or None for PKCS#1 v1.5.
DECRYPT_ALGORITHMS: dict[str, type[hashes.HashAlgorithm] | None] = {
    "RSA/ECB/PKCS1PADDING": None,
    "RSA/ECB/OAEPWITHSHA-1ANDMGF1PADDING": hashes.SHA1,
    "RSA/ECB/OAEPWITHSHA-256ANDMGF1PADDING": hashes.SHA256,
    "RSA/ECB/OAEPWITHSHA-512ANDMGF1PADDING": hashes.SHA512,
}

# Java signature name (upper-cased) -> (hash, PSS?).
SIGN_ALGORITHMS: dict[str, tuple[type[hashes.HashAlgorithm], bool]] = {
    "SHA256WITHRSA": (hashes.SHA256, False),
    "SHA384WITHRSA": (hashes.SHA384, False),
    "SHA512WITHRSA": (hashes.SHA512, False),
    "SHA256WITHRSA/PSS": (hashes.SHA256, True),
    "SHA384WITHRSA/PSS": (hashes.SHA384, True),
    "SHA512WITHRSA/PSS": (hashes.SHA512, True),
}


def _checked(key: object) -> rsa.RSAPrivateKey:
    if not isinstance(key, rsa.RSAPrivateKey):
        raise InvalidRequest("private_key: an RSA private key is expected")
    if not MIN_RSA_BITS <= key.key_size <= MAX_RSA_BITS:
        raise InvalidRequest(f"private_key: RSA of {MIN_RSA_BITS} to {MAX_RSA_BITS} bits")
    return key


def load_private_key(data: bytes | str, password: bytes | None = None) -> rsa.RSAPrivateKey:
    """An RSA private key from PEM (PKCS#1 or PKCS#8), DER, or base64 of DER.

    Google's ``wrapprivatekey`` example sends PEM inside a JSON string with its line
    breaks written as the two characters ``\\n``; those are accepted too.
    """
    raw = data.encode("utf-8", "replace") if isinstance(data, str) else bytes(data)
    stripped = raw.strip()
    try:
        if stripped.startswith(b"-----BEGIN"):
            pem = stripped.replace(b"\\r", b"").replace(b"\\n", b"\n")
            key = serialization.load_pem_private_key(pem, password=password)
        else:
            if not stripped.startswith(b"\x30"):
                try:
                    stripped = base64.b64decode(stripped, validate=True)
                except (binascii.Error, ValueError):
                    raise InvalidRequest("private_key: not PEM, DER or base64 of DER") from None
            # PKCS#8 or PKCS#1 ("traditional") DER: both are read here.
            key = serialization.load_der_private_key(stripped, password=password)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        # Never echo what was sent: it is a private key (or close to one).
        raise InvalidRequest("private_key: not a readable private key (or wrong password)") \
            from None
    return _checked(key)


def pkcs8_der(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def private_key_from_pkcs8(der: bytes) -> rsa.RSAPrivateKey:
    """The key inside an opened wrapped private key (authenticated: it was checked when
    wrapped, so the expensive RSA consistency check is not repeated on every call)."""
    key = serialization.load_der_private_key(der, password=None,
                                             unsafe_skip_rsa_key_validation=True)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise IntegrityFailure("the wrapped private key is not an RSA key")
    return key


def spki_sha256(public_key: rsa.RSAPublicKey) -> bytes:
    """SHA-256 of the DER SubjectPublicKeyInfo: Google's ``spki_hash`` (SHA-256)."""
    spki = public_key.public_bytes(serialization.Encoding.DER,
                                   serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(spki).digest()


def decrypt_key(key: rsa.RSAPrivateKey, algorithm: str, ciphertext: bytes,
                label: bytes | None) -> bytes:
    """``privatekeydecrypt``'s RSA decryption; ``algorithm`` was checked by the caller."""
    oaep_hash = DECRYPT_ALGORITHMS[algorithm.upper()]
    scheme: padding.AsymmetricPadding
    if oaep_hash is None:
        scheme = padding.PKCS1v15()
    else:
        scheme = padding.OAEP(mgf=padding.MGF1(oaep_hash()), algorithm=oaep_hash(),
                              label=label or None)
    try:
        return key.decrypt(ciphertext, scheme)
    except ValueError:
        raise DecryptionFailed("decryption failed") from None


def sign_digest(key: rsa.RSAPrivateKey, algorithm: str, digest: bytes,
                salt_length: int | None) -> bytes:
    """``privatekeysign``: sign a digest computed by the client (prehashed)."""
    hash_type, pss = SIGN_ALGORITHMS[algorithm.upper()]
    chosen = hash_type()
    if len(digest) != chosen.digest_size:
        raise InvalidRequest(f"digest: {chosen.digest_size} bytes for {algorithm}")
    scheme: padding.AsymmetricPadding
    if pss:
        salt = chosen.digest_size if salt_length is None else salt_length
        # RFC 8017 §9.1.1: emLen >= hLen + sLen + 2.
        if not 0 <= salt <= (key.key_size + 7) // 8 - chosen.digest_size - 2:
            raise InvalidRequest("rsa_pss_salt_length: out of range for this key")
        scheme = padding.PSS(mgf=padding.MGF1(hash_type()), salt_length=salt)
    else:
        scheme = padding.PKCS1v15()
    return key.sign(digest, scheme, Prehashed(chosen))


# --- the certificate chain Gmail receives (cse.keypairs.create's ``pkcs7``) ----------------------


def load_chain(data: bytes, key: rsa.RSAPrivateKey) -> list[x509.Certificate]:
    """The certificates of ``data`` (PEM certificates, or a PEM PKCS#7), leaf first.

    The leaf is the certificate of ``key``'s public key; the others keep their order.
    """
    try:
        if b"-----BEGIN PKCS7-----" in data:
            certs = pkcs7.load_pem_pkcs7_certificates(data)
        else:
            certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise InvalidRequest("certificate: not PEM certificates or a PEM PKCS#7") from None
    spki = spki_sha256(key.public_key())
    leaves = [c for c in certs if isinstance(c.public_key(), rsa.RSAPublicKey)
              and spki_sha256(c.public_key()) == spki]  # type: ignore[arg-type]
    if not leaves:
        raise InvalidRequest("certificate: none is the private key's certificate")
    leaf = leaves[0]
    return [leaf, *(c for c in certs if c is not leaf)]


def certificate_emails(cert: x509.Certificate) -> set[str]:
    """The mailboxes a certificate names (rfc822Name, else the subject's emailAddress),
    lower-cased."""
    found: set[str] = set()
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        found.update(str(n).lower() for n in names.get_values_for_type(x509.RFC822Name))
    except x509.ExtensionNotFound:
        pass
    for attr in cert.subject.get_attributes_for_oid(NameOID.EMAIL_ADDRESS):
        found.add(str(attr.value).lower())
    return found


def pkcs7_pem(chain: list[x509.Certificate]) -> bytes:
    """The chain as Gmail's ``pkcs7`` wants it: PKCS#7, PEM, ASCII armour."""
    return pkcs7.serialize_certificates(chain, serialization.Encoding.PEM)
