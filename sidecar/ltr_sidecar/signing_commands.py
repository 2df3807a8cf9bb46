"""The `keygen`, `sign` and `verify` subcommands: thin adapters over :mod:`.signing`."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

log = logging.getLogger("ltr_sidecar")


def _keygen(args: argparse.Namespace) -> int:
    from .signing import generate_key_pair, key_id, load_private_key

    try:
        private_path, public_path = generate_key_pair(args.out, args.name)
    except (ValueError, OSError) as e:
        print(f"ltr-sidecar keygen: --out {args.out}: {e}", file=sys.stderr)
        return 2
    print(f"key {key_id(load_private_key(private_path).public_key())}: private {private_path} (mode 0600; keep it secret, "
          f"never commit it), public {public_path} (give it to servers: serve --trusted-key {public_path})")
    return 0


def _sign(args: argparse.Namespace) -> int:
    from .bundle import BundleError
    from .signing import key_id, load_private_key, sign_bundle

    try:
        key = load_private_key(args.key)
        path = sign_bundle(args.bundle, key)
    except (BundleError, ValueError, OSError) as e:
        print(f"ltr-sidecar sign: {e}", file=sys.stderr)
        return 2
    print(f"signed {args.bundle} with key {key_id(key.public_key())}: {path}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    from .bundle import BundleError, load_bundle

    try:
        bundle = load_bundle(args.bundle, trusted_key=args.trusted_key)
    except (BundleError, ValueError, OSError) as e:
        print(f"ltr-sidecar verify: {e}", file=sys.stderr)
        return 2
    print(f"{args.bundle}: {bundle.model_version}, every file's sha256 matches, signed by key {bundle.signed_by}")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Add `keygen`, `sign` and `verify` to the `ltr-sidecar` parser's subcommands."""
    p = sub.add_parser("keygen", help="make an Ed25519 key pair for signing bundles",
                       description="Write NAME.key (PEM private key, mode 0600) and NAME.pub (PEM public key) into --out. "
                       "Existing files are never overwritten.")
    p.add_argument("--out", type=Path, required=True, help="directory for the two files (created mode 0700 if missing; required)")
    p.add_argument("--name", default="ltr-sidecar", help="file name stem (default: ltr-sidecar)")
    p.set_defaults(func=_keygen)

    p = sub.add_parser("sign", help="sign a bundle: write ranker.sig over its ranker.json",
                       description="Check every file's sha256, then write BUNDLE/ranker.sig: an Ed25519 signature over the "
                       "exact bytes of ranker.json, which holds those hashes. Rewriting ranker.json afterwards "
                       "(ltr-sidecar train does) drops the signature.")
    p.add_argument("bundle", type=Path, help="ranker bundle directory")
    p.add_argument("--key", type=Path, required=True, help="PEM Ed25519 private key, from `ltr-sidecar keygen` (required)")
    p.set_defaults(func=_sign)

    p = sub.add_parser("verify", help="check a bundle's hashes and its signature against trusted keys",
                       description="What `serve --trusted-key` checks at start-up: exit 0 if every file matches its sha256 "
                       "and ranker.sig is a valid signature of ranker.json by a key in --trusted-key, else print why and exit 2.")
    p.add_argument("bundle", type=Path, help="ranker bundle directory")
    p.add_argument("--trusted-key", type=Path, required=True, help="PEM file of one or more Ed25519 public keys (required)")
    p.set_defaults(func=_verify)
