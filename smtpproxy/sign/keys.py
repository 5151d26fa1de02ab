"""DKIM keys: loading, generating, their DNS records and how they are kept on disk.

Contract:

- ``load_key(path)`` reads a private key file and returns a ``PrivateKey``
  (algorithm rsa-sha256 or ed25519-sha256, the parsed key ready for dkimpy,
  the public key bytes for the DNS record). RSA keys are PEM (PKCS#1 or
  PKCS#8, as openssl and opendkim-genkey write them); ed25519 keys are the
  base64 32-byte seed (dkimpy's format, what ``generate_ed25519`` writes) or
  PKCS#8 PEM (``openssl genpkey -algorithm ed25519``). Anything else raises
  ``KeyError_`` with a sentence for the administrator; RSA keys under 1024
  bits are refused (RFC 8301).
- ``dns_record(key)`` is the TXT record text; ``txt_strings`` splits it into
  the 255-octet character-strings a zone file needs (RFC 1035 3.3.14).
- ``record_matches(key, txt)`` says whether a published record holds this
  key's public half.
- ``write_private_key`` creates the file 0640 (owner and the daemon's group),
  refusing to overwrite; ``loose_permissions`` names what is wrong with an
  existing file's mode.

RSA generation uses the openssl command (its primes are better tested than
ours would be); ed25519 uses PyNaCl.

``PrivateKey.sign(hash)`` signs a finished SHA-256 hash object (RFC 6376
3.7: RSASSA-PKCS1-v1_5; RFC 8463: Ed25519 over the hash's digest). RSA goes
through OpenSSL (the ``cryptography`` package) when it is installed: about
twenty times faster than dkimpy's pure-Python arithmetic, which stays the
fallback.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import stat
import subprocess
from dataclasses import dataclass
from typing import Any

import dkim.util
import nacl.signing
from dkim.crypto import (
    RSASSA_PKCS1_v1_5_sign,
    UnparsableKeyError,
    parse_pem_private_key,
    parse_public_key,
)

try:
    from cryptography.hazmat.primitives import hashes as _hashes
    from cryptography.hazmat.primitives import serialization as _serialization
    from cryptography.hazmat.primitives.asymmetric import padding as _padding
    from cryptography.hazmat.primitives.asymmetric import utils as _asym_utils
except ImportError:  # dkimpy's own RSA arithmetic then
    _serialization = None

MIN_RSA_BITS = 1024  # RFC 8301: verifiers refuse smaller keys
OPENSSL = "/usr/bin/openssl"
# DER prefix of a PKCS#8 ed25519 private key (RFC 8410): the seed follows.
_ED25519_PKCS8_PREFIX = bytes.fromhex("302e020100300506032b657004220420")
# DER of AlgorithmIdentifier rsaEncryption with NULL parameters.
_RSA_ALGORITHM_ID = bytes.fromhex("300d06092a864886f70d0101010500")


class KeyError_(Exception):  # noqa: N801 - KeyError is taken by the builtin
    """A key file that cannot be used; the text says why."""


@dataclass(frozen=True)
class PrivateKey:
    algorithm: bytes           # b"rsa-sha256" or b"ed25519-sha256"
    key: Any                   # dkimpy's RSA dict, or a nacl SigningKey
    public: bytes              # SubjectPublicKeyInfo DER (RSA) or the 32 raw bytes (ed25519)
    bits: int                  # RSA modulus size; 256 for ed25519
    pem: bytes                 # the file's content (dkimpy's ARC signer parses it itself)
    fast: Any = None           # the same RSA key for OpenSSL, when cryptography is there

    def sign(self, hash_obj: Any) -> bytes:
        """The signature of a finished SHA-256 hash object (hashlib or dkimpy's HashThrough)."""
        if self.algorithm == b"ed25519-sha256":
            return self.key.sign(hash_obj.digest()).signature
        if self.fast is not None:
            return self.fast.sign(hash_obj.digest(), _padding.PKCS1v15(),
                                  _asym_utils.Prehashed(_hashes.SHA256()))
        return RSASSA_PKCS1_v1_5_sign(hash_obj, self.key)

    @property
    def key_type(self) -> str:
        return "rsa" if self.algorithm == b"rsa-sha256" else "ed25519"


# ------------------------------------------------------------------ DER helpers


def _der_len(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def _der(tag: int, body: bytes) -> bytes:
    return bytes([tag]) + _der_len(len(body)) + body


def _der_int(n: int) -> bytes:
    body = n.to_bytes(n.bit_length() // 8 + 1, "big")  # leading 0 keeps it positive
    return _der(0x02, body)


def rsa_public_der(modulus: int, exponent: int) -> bytes:
    """SubjectPublicKeyInfo for an RSA key: what p= holds (RFC 6376 3.6.1)."""
    rsa_key = _der(0x30, _der_int(modulus) + _der_int(exponent))
    return _der(0x30, _RSA_ALGORITHM_ID + _der(0x03, b"\x00" + rsa_key))


# ------------------------------------------------------------------ loading


def parse_key(data: bytes) -> PrivateKey:
    """The key in ``data`` (a key file's content); raises KeyError_."""
    text = data.strip()
    if b"-----BEGIN" in text:
        pem_body = re.search(rb"-----BEGIN [A-Z ]+-----(.*?)-----END", text, re.S)
        der = b""
        if pem_body:
            try:
                der = base64.b64decode(b"".join(pem_body.group(1).split()))
            except binascii.Error:
                raise KeyError_("PEM data is not valid base64") from None
        if der.startswith(_ED25519_PKCS8_PREFIX) and len(der) == len(_ED25519_PKCS8_PREFIX) + 32:
            return _ed25519(der[-32:], data)
        try:
            pk = parse_pem_private_key(text.replace(b"\r\n", b"\n") + b"\n")
        except (UnparsableKeyError, ValueError, IndexError, TypeError) as exc:
            raise KeyError_(f"not an RSA or ed25519 private key: {str(exc).splitlines()[0]}") from None
        bits = pk["modulus"].bit_length()
        if bits < MIN_RSA_BITS:
            raise KeyError_(f"RSA key of {bits} bits; verifiers refuse keys under {MIN_RSA_BITS} (RFC 8301)")
        return PrivateKey(b"rsa-sha256", pk, rsa_public_der(pk["modulus"], pk["publicExponent"]),
                          bits, data, _openssl_key(text))
    try:
        seed = base64.b64decode(text, validate=True)
    except binascii.Error:
        raise KeyError_("neither PEM nor a base64 ed25519 key") from None
    if len(seed) != 32:
        raise KeyError_(f"a base64 ed25519 key is 32 bytes, this one {len(seed)}")
    return _ed25519(seed, data)


def _openssl_key(pem: bytes) -> Any:
    if _serialization is None:
        return None
    try:
        return _serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError):
        return None  # dkimpy read it; its arithmetic signs then


def _ed25519(seed: bytes, data: bytes) -> PrivateKey:
    signing = nacl.signing.SigningKey(seed)
    # dkimpy's ARC and DKIM signers take the seed in base64.
    return PrivateKey(b"ed25519-sha256", signing, bytes(signing.verify_key), 256,
                      base64.b64encode(seed))


def load_key(path: str) -> PrivateKey:
    try:
        with open(path, "rb") as f:
            data = f.read(65536)
    except OSError as exc:
        raise KeyError_(f"cannot read {path}: {exc.strerror}") from None
    try:
        return parse_key(data)
    except KeyError_ as exc:
        raise KeyError_(f"{path}: {exc}") from None


def loose_permissions(path: str) -> str | None:
    """What is too open about a key file's mode (None: fine); 0640 or tighter is fine."""
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return None  # loading the key reports that
    if mode & 0o007:
        return f"{path} is accessible to others (mode {mode:04o}); chmod 0640"
    if mode & 0o030:
        return f"{path} is writable or executable by its group (mode {mode:04o}); chmod 0640"
    return None


# ------------------------------------------------------------------ generating


def generate_rsa(bits: int = 2048) -> bytes:
    if bits < MIN_RSA_BITS:
        raise KeyError_(f"RSA keys under {MIN_RSA_BITS} bits are refused by verifiers (RFC 8301)")
    try:
        result = subprocess.run(
            [OPENSSL, "genpkey", "-algorithm", "RSA", "-pkeyopt", f"rsa_keygen_bits:{bits}"],
            capture_output=True, timeout=300, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise KeyError_(f"cannot run {OPENSSL}: {exc}") from None
    if result.returncode != 0:
        raise KeyError_(f"openssl failed: {result.stderr.decode(errors='replace').strip()}")
    return result.stdout


def generate_ed25519() -> bytes:
    seed = bytes(nacl.signing.SigningKey.generate())
    return base64.b64encode(seed) + b"\n"


def write_private_key(path: str, data: bytes) -> None:
    """Create ``path`` 0640 with ``data``; an existing file is never overwritten."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
    try:
        os.fchmod(fd, 0o640)  # whatever the umask says
        os.write(fd, data)
    finally:
        os.close(fd)


# ------------------------------------------------------------------ DNS records


def dns_record(key: PrivateKey) -> str:
    return f"v=DKIM1; k={key.key_type}; p={base64.b64encode(key.public).decode('ascii')}"


def txt_strings(record: str) -> list[str]:
    """The record as character-strings of at most 255 octets each."""
    raw = record.encode("ascii")
    return [raw[i:i + 255].decode("ascii") for i in range(0, len(raw), 255)] or [""]


def zone_line(domain: str, selector: str, key: PrivateKey) -> str:
    """The resource record, ready to paste into a zone file."""
    strings = " ".join(f'"{s}"' for s in txt_strings(dns_record(key)))
    return f"{selector}._domainkey.{domain.rstrip('.')}. IN TXT ( {strings} )"


def record_matches(key: PrivateKey, txt: bytes) -> tuple[bool, str]:
    """(whether ``txt``, a DKIM key record, publishes this key; why not)."""
    try:
        tags = dkim.util.parse_tag_value(txt)
    except Exception:
        return False, "the record does not parse as tag=value list"
    if tags.get(b"v", b"DKIM1") != b"DKIM1":
        return False, "v= is not DKIM1"
    k = tags.get(b"k", b"rsa").decode("ascii", "replace").lower()
    if k != key.key_type:
        return False, f"the record is k={k}, the key is {key.key_type}"
    p = b"".join(tags.get(b"p", b"").split())
    if not p:
        return False, "the key is revoked (empty p=)"
    try:
        published = base64.b64decode(p, validate=True)
    except binascii.Error:
        return False, "p= is not base64"
    if key.key_type == "ed25519":
        return (published == key.public, "" if published == key.public else "a different key")
    try:
        pub = parse_public_key(published)
    except (UnparsableKeyError, Exception):
        return False, "p= is not an RSA public key"
    same = pub["modulus"] == key.key["modulus"] and pub["publicExponent"] == key.key["publicExponent"]
    return same, "" if same else "a different key"
