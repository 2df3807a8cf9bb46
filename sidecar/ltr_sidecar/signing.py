"""Ed25519 signatures over a bundle's ranker.json, so a server can refuse bundles nobody it trusts made.

ranker.json holds the sha256 of every other file of the bundle, so one
signature over its exact bytes covers the model, the tokenizer and the
metadata.  The signature lives beside it in ``ranker.sig`` (which ranker.json
cannot list: it would have to contain its own signature)::

    {"format": "ltr-ranker-signature/1", "algorithm": "ed25519",
     "signed_file": "ranker.json", "key_id": "<16 hex>", "signature": "<base64>"}

Keys are PEM files: a PKCS#8 private key (``ltr-sidecar keygen`` writes it
mode 0600) and SubjectPublicKeyInfo public keys; a trusted-key file may hold
several public keys, one PEM block each.  `cryptography` is imported only
here, and only when something is signed or verified: it comes with the
``signing`` extra (and ``train``), so a server that checks no signatures
does not need it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .bundle import METADATA_FILE, SIGNATURE_FILE, BundleError, load_bundle

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

SIGNATURE_FORMAT = "ltr-ranker-signature/1"
_PUBLIC_PEM = re.compile(rb"-----BEGIN PUBLIC KEY-----.+?-----END PUBLIC KEY-----", re.S)


def _crypto() -> Any:
    try:
        from cryptography.hazmat.primitives import serialization
    except ImportError as e:  # pragma: no cover - the test extra installs it
        raise ValueError("bundle signatures need the cryptography package: pip install 'ltr-sidecar[signing]'") from e
    return serialization


def key_id(public_key: Ed25519PublicKey) -> str:
    """A short name for a public key: the first 16 hex digits of the sha256 of its 32 raw bytes."""
    serialization = _crypto()
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def generate_key_pair(directory: str | Path, name: str = "ltr-sidecar") -> tuple[Path, Path]:
    """Write <name>.key (private, mode 0600) and <name>.pub in `directory`; never overwrite either."""
    serialization = _crypto()  # first: a missing package is named, not an ImportError
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    directory = Path(directory)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    private_path, public_path = directory / f"{name}.key", directory / f"{name}.pub"
    for path in (private_path, public_path):
        if path.exists():
            raise ValueError(f"{path}: already exists; keys are never overwritten")
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    # Created 0600 from the start: no moment at which another user could read it.
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(private_pem)
    public_path.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return private_path, public_path


def load_private_key(path: str | Path) -> Ed25519PrivateKey:
    """An unencrypted PEM Ed25519 private key; ValueError naming the file otherwise."""
    serialization = _crypto()  # first: a missing package is named, not an ImportError
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise ValueError(f"signing key {path}: {e.strerror or e}") from e
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as e:
        raise ValueError(f"signing key {path}: not an unencrypted PEM private key ({e})") from e
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"signing key {path}: a {type(key).__name__}, not an Ed25519 key")
    return key


def load_public_keys(path: str | Path) -> list[Ed25519PublicKey]:
    """Every Ed25519 public key (PEM blocks) in a file; ValueError naming the file if there is none or one is not Ed25519."""
    serialization = _crypto()  # first: a missing package is named, not an ImportError
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise ValueError(f"trusted key file {path}: {e.strerror or e}") from e
    keys = []
    for n, block in enumerate(_PUBLIC_PEM.findall(data), start=1):
        try:
            key = serialization.load_pem_public_key(block)
        except ValueError as e:
            raise ValueError(f"trusted key file {path}: public key {n} is not valid PEM ({e})") from e
        if not isinstance(key, Ed25519PublicKey):
            raise ValueError(f"trusted key file {path}: public key {n} is a {type(key).__name__}, not an Ed25519 key")
        keys.append(key)
    if not keys:
        raise ValueError(f"trusted key file {path}: no PEM public key (-----BEGIN PUBLIC KEY-----) in it")
    return keys


def sign_bundle(bundle_dir: str | Path, private_key: Ed25519PrivateKey) -> Path:
    """Check the bundle's hashes, then write ranker.sig over its ranker.json; return the signature's path."""
    bundle_dir = Path(bundle_dir)
    load_bundle(bundle_dir)  # never sign a corrupt bundle
    signature = private_key.sign((bundle_dir / METADATA_FILE).read_bytes())
    record = {
        "format": SIGNATURE_FORMAT,
        "algorithm": "ed25519",
        "signed_file": METADATA_FILE,
        "key_id": key_id(private_key.public_key()),
        "signature": base64.b64encode(signature).decode("ascii"),
    }
    out = bundle_dir / SIGNATURE_FILE
    out.write_text(json.dumps(record, indent=2) + "\n")
    return out


def verify_metadata(bundle_dir: Path, metadata: bytes, trusted_key_file: str | Path) -> str:
    """Check ranker.sig over these exact ranker.json bytes against the keys in `trusted_key_file`.

    Returns the id of the key that signed; raises BundleError naming ranker.sig otherwise (unsigned,
    malformed, or signed over other bytes or by a key not in the file).
    """
    keys = load_public_keys(trusted_key_file)  # first: names a missing cryptography package
    from cryptography.exceptions import InvalidSignature

    sig_path = bundle_dir / SIGNATURE_FILE
    if not sig_path.is_file():
        raise BundleError(f"{sig_path}: not found: the bundle is unsigned, and --trusted-key {trusted_key_file} requires a signature")
    try:
        record = json.loads(sig_path.read_bytes())
        signature = base64.b64decode(record["signature"], validate=True)
        signer = str(record.get("key_id", "unknown"))
        if record.get("format") != SIGNATURE_FORMAT or record.get("algorithm") != "ed25519":
            raise ValueError(f"format {record.get('format')!r} / algorithm {record.get('algorithm')!r}")
    except (ValueError, KeyError, TypeError, AttributeError, binascii.Error) as e:
        raise BundleError(f"{sig_path}: not a valid {SIGNATURE_FORMAT} signature file ({e})") from e
    for key in keys:
        try:
            key.verify(signature, metadata)
        except InvalidSignature:
            continue
        return key_id(key)
    trusted = ", ".join(key_id(k) for k in keys)
    raise BundleError(f"{sig_path}: does not verify {bundle_dir / METADATA_FILE} with any key in {trusted_key_file} "
                      f"(signed by key {signer}; trusted: {trusted}): ranker.json changed after signing, or another key signed it")
