"""A ranker bundle: the directory a ranker ships in, and its integrity check.

Layout::

    model.onnx      inputs input_ids, attention_mask: int64 [batch, seq];
                    output: float32 [batch], higher = shorter predicted output
    tokenizer.json  a Hugging Face `tokenizers` file
    ranker.json     metadata, including the sha256 of every other file
    ranker.sig      optional: an Ed25519 signature over ranker.json's bytes
                    (:mod:`.signing`); the one file ranker.json does not list

Only ONNX and JSON are ever loaded (no pickle), and nothing is loaded before
its hash has been checked, so a tampered or half-copied bundle is refused.
Hashes catch accidents; with a trusted key (`serve --trusted-key`) the
signature also catches anyone who edits ranker.json to ship another model.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FORMAT = "ltr-ranker/1"
MODEL_FILE = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"
METADATA_FILE = "ranker.json"
SIGNATURE_FILE = "ranker.sig"
REQUIRED_FILES = (MODEL_FILE, TOKENIZER_FILE)
DEFAULT_BUNDLE = Path(__file__).resolve().parent / "bundles" / "default"


class BundleError(ValueError):
    """The bundle is missing, malformed, or does not match its recorded hashes."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class Bundle:
    """A verified bundle directory and its metadata."""

    path: Path
    name: str
    version: str
    max_length: int
    model_sha256: str
    metadata: dict[str, Any] = field(repr=False)
    # Prompts longer than max_length keep this many tokens of their head and
    # the rest from their tail (ranker.json "truncation"); 0: the head only.
    head_tokens: int = 0
    # The id of the trusted key whose signature was verified; "" when none was asked for.
    signed_by: str = ""

    @property
    def model_path(self) -> Path:
        return self.path / MODEL_FILE

    @property
    def tokenizer_path(self) -> Path:
        return self.path / TOKENIZER_FILE

    @property
    def model_version(self) -> str:
        """The identity returned with every score: scores compare only within one."""
        return f"{self.name}@{self.version}"

    @property
    def evaluation(self) -> dict[str, float]:
        figures = self.metadata.get("evaluation", {})
        return {k: float(v) for k, v in figures.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}

    @property
    def license(self) -> str:
        return str(self.metadata.get("base_model", {}).get("license", ""))


def load_bundle(path: str | Path, trusted_key: str | Path | None = None) -> Bundle:
    """Read ranker.json and verify every file's sha256; raise BundleError naming the file.

    With `trusted_key` (a PEM file of Ed25519 public keys) ranker.sig must also be a valid
    signature of ranker.json by one of them; the very bytes verified are the ones parsed.
    """
    path = Path(path)
    meta_path = path / METADATA_FILE
    if not meta_path.is_file():
        raise BundleError(f"{meta_path}: not found (is {path} a ranker bundle?)")
    raw = meta_path.read_bytes()
    signed_by = ""
    if trusted_key is not None:
        from .signing import verify_metadata

        signed_by = verify_metadata(path, raw, trusted_key)
    try:
        meta = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BundleError(f"{meta_path}: not valid JSON: {e}") from e
    if meta.get("format") != FORMAT:
        raise BundleError(f"{meta_path}: format is {meta.get('format')!r}, expected {FORMAT!r}")
    files = meta.get("files")
    if not isinstance(files, dict):
        raise BundleError(f"{meta_path}: 'files' must map file names to their sha256")
    for name in REQUIRED_FILES:
        if name not in files:
            raise BundleError(f"{meta_path}: 'files' has no entry for {name}")
    for name, entry in files.items():
        expected = entry.get("sha256") if isinstance(entry, dict) else None
        file_path = path / name
        if Path(name).name != name:
            raise BundleError(f"{meta_path}: file name {name!r} must not contain a path")
        if not file_path.is_file():
            raise BundleError(f"{file_path}: listed in {METADATA_FILE} but missing")
        actual = sha256_file(file_path)
        if actual != expected:
            raise BundleError(f"{file_path}: sha256 mismatch (expected {expected}, found {actual}); the bundle is corrupt")
    try:
        max_length = int(meta["max_length"])
        name, version = str(meta["name"]), str(meta["version"])
    except (KeyError, TypeError, ValueError) as e:
        raise BundleError(f"{meta_path}: needs 'name', 'version' and an integer 'max_length' ({e})") from e
    if max_length <= 0:
        raise BundleError(f"{meta_path}: max_length must be positive")
    truncation = meta.get("truncation", {})
    head_tokens = truncation.get("head_tokens", 0) if isinstance(truncation, dict) else None
    if not (isinstance(head_tokens, int) and not isinstance(head_tokens, bool) and 0 <= head_tokens < max_length):
        raise BundleError(f"{meta_path}: truncation.head_tokens must be an integer in [0, max_length), not {head_tokens!r}")
    return Bundle(
        path=path,
        name=name,
        version=version,
        max_length=max_length,
        model_sha256=files[MODEL_FILE]["sha256"],
        metadata=meta,
        head_tokens=head_tokens,
        signed_by=signed_by,
    )


def write_metadata(path: str | Path, metadata: dict[str, Any]) -> Path:
    """Write ranker.json for the model and tokenizer already in `path`, hashing every file.

    `metadata` must hold name, version and max_length; anything else (evaluation,
    base_model with its licence, training, split) is recorded as given. A
    signature of the previous ranker.json no longer holds, so it is removed.
    """
    path = Path(path)
    for key in ("name", "version", "max_length"):
        if key not in metadata:
            raise BundleError(f"metadata needs {key!r}")
    (path / SIGNATURE_FILE).unlink(missing_ok=True)
    extra = sorted(p.name for p in path.iterdir() if p.is_file() and p.name not in (METADATA_FILE, SIGNATURE_FILE, *REQUIRED_FILES))
    files = {name: {"sha256": sha256_file(path / name)} for name in (*REQUIRED_FILES, *extra)}
    meta = {"format": FORMAT, **metadata, "files": files}
    out = path / METADATA_FILE
    out.write_text(json.dumps(meta, indent=2, sort_keys=False) + "\n")
    return out
