"""Signed bundles: keygen, sign, verify, and `serve --trusted-key` refusing what no trusted key signed."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from ltr_sidecar.bundle import DEFAULT_BUNDLE, SIGNATURE_FILE, BundleError, load_bundle, write_metadata
from ltr_sidecar.cli import main
from ltr_sidecar.signing import key_id, load_private_key

RELEASE_KEY = Path(__file__).resolve().parents[1] / "keys" / "ltr-sidecar-release.pub"


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two key pairs made by `ltr-sidecar keygen`: 'ours' signs, 'theirs' is some other key."""
    directory = tmp_path_factory.mktemp("keys") / "keys"
    assert main(["keygen", "--out", str(directory), "--name", "ours"]) == 0
    assert main(["keygen", "--out", str(directory), "--name", "theirs"]) == 0
    return {"ours": directory / "ours.key", "ours.pub": directory / "ours.pub", "theirs.pub": directory / "theirs.pub"}


@pytest.fixture
def signed(tiny_bundle: Path, tmp_path: Path, keys: dict[str, Path]) -> Path:
    bundle = shutil.copytree(tiny_bundle, tmp_path / "signed")
    assert main(["sign", str(bundle), "--key", str(keys["ours"])]) == 0
    return bundle


def serve_exit(bundle: Path, trusted_key: Path, timeout: float = 60) -> tuple[int, list[str]]:
    """Run `serve --trusted-key` to its end (it fails at start-up); the exit code and its stderr lines."""
    proc = subprocess.run(
        [sys.executable, "-m", "ltr_sidecar", "serve", "--model", str(bundle), "--trusted-key", str(trusted_key),
         "--port", "0", "--metrics-port", "-1"],
        capture_output=True, text=True, timeout=timeout,
    )
    return proc.returncode, [line for line in proc.stderr.splitlines() if line.strip()]


def test_keygen_writes_a_private_key_only_its_owner_can_read_and_never_overwrites(keys: dict[str, Path], capsys):
    assert stat.S_IMODE(os.stat(keys["ours"]).st_mode) == 0o600
    assert b"BEGIN PUBLIC KEY" in keys["ours.pub"].read_bytes()
    before = keys["ours"].read_bytes()
    assert main(["keygen", "--out", str(keys["ours"].parent), "--name", "ours"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert keys["ours"].read_bytes() == before


def test_a_signed_bundle_verifies_with_its_key_and_names_it(signed: Path, keys: dict[str, Path], capsys):
    bundle = load_bundle(signed, trusted_key=keys["ours.pub"])
    assert bundle.signed_by == key_id(load_private_key(keys["ours"]).public_key())
    capsys.readouterr()
    assert main(["verify", str(signed), "--trusted-key", str(keys["ours.pub"])]) == 0
    assert f"signed by key {bundle.signed_by}" in capsys.readouterr().out
    # ranker.json does not list its own signature, and a load without trusted keys ignores it.
    assert SIGNATURE_FILE not in json.loads((signed / "ranker.json").read_text())["files"]
    assert load_bundle(signed).signed_by == ""


def test_a_file_of_several_keys_trusts_each_of_them(signed: Path, keys: dict[str, Path], tmp_path: Path):
    both = tmp_path / "trusted.pem"
    both.write_bytes(keys["theirs.pub"].read_bytes() + keys["ours.pub"].read_bytes())
    assert load_bundle(signed, trusted_key=both).signed_by


def test_rewriting_ranker_json_drops_the_signature_it_no_longer_matches(signed: Path):
    meta = json.loads((signed / "ranker.json").read_text())
    write_metadata(signed, {k: v for k, v in meta.items() if k not in ("format", "files")})
    assert not (signed / SIGNATURE_FILE).exists()


def test_serve_with_a_trusted_key_refuses_an_unsigned_bundle_naming_the_file(tiny_bundle: Path, keys: dict[str, Path]):
    code, lines = serve_exit(tiny_bundle, keys["ours.pub"])
    assert code == 2 and len(lines) == 1, lines
    assert f"{tiny_bundle / SIGNATURE_FILE}: not found: the bundle is unsigned" in lines[0]
    assert "Traceback" not in lines[0]


def test_serve_with_a_trusted_key_refuses_a_ranker_json_edited_and_rehashed_after_signing(signed: Path, keys: dict[str, Path]):
    # Someone swaps the model and rewrites ranker.json with correct hashes, keeping the old signature.
    signature = (signed / SIGNATURE_FILE).read_bytes()
    (signed / "model.onnx").write_bytes((signed / "model.onnx").read_bytes() + b" ")  # another model, as far as hashes go
    meta = json.loads((signed / "ranker.json").read_text())
    write_metadata(signed, {k: v for k, v in meta.items() if k not in ("format", "files")})
    (signed / SIGNATURE_FILE).write_bytes(signature)
    load_bundle(signed)  # the hashes alone are fine: only the signature can catch this

    code, lines = serve_exit(signed, keys["ours.pub"])
    assert code == 2 and len(lines) == 1, lines
    assert f"{signed / SIGNATURE_FILE}: does not verify {signed / 'ranker.json'}" in lines[0]


def test_serve_with_a_trusted_key_refuses_a_bundle_signed_by_another_key(signed: Path, keys: dict[str, Path]):
    code, lines = serve_exit(signed, keys["theirs.pub"])
    assert code == 2 and len(lines) == 1, lines
    assert f"{signed / SIGNATURE_FILE}: does not verify" in lines[0] and str(keys["theirs.pub"]) in lines[0]


def test_serve_with_a_trusted_key_that_is_not_a_key_file_names_it(signed: Path, tmp_path: Path):
    not_a_key = tmp_path / "empty.pem"
    not_a_key.write_text("hello\n")
    code, lines = serve_exit(signed, not_a_key)
    assert code == 2 and len(lines) == 1 and f"trusted key file {not_a_key}: no PEM public key" in lines[0], lines


def test_serve_with_the_signing_key_serves_the_signed_bundle(signed: Path, keys: dict[str, Path]):
    proc = subprocess.Popen(
        [sys.executable, "-m", "ltr_sidecar", "serve", "--model", str(signed), "--trusted-key", str(keys["ours.pub"]),
         "--port", "0", "--metrics-port", "-1"],
        stderr=subprocess.PIPE, text=True,
    )
    try:
        messages = []
        for line in proc.stderr:  # type: ignore[union-attr]
            messages.append(json.loads(line)["msg"])
            if messages[-1] == "serving" or len(messages) > 20:
                break
        assert "serving" in messages
    finally:
        proc.terminate()
        proc.communicate(timeout=30)


def test_sign_refuses_a_corrupt_bundle(tiny_bundle: Path, tmp_path: Path, keys: dict[str, Path], capsys):
    bundle = shutil.copytree(tiny_bundle, tmp_path / "b")
    (bundle / "tokenizer.json").write_text("{}")
    assert main(["sign", str(bundle), "--key", str(keys["ours"])]) == 2
    assert "tokenizer.json: sha256 mismatch" in capsys.readouterr().err
    assert not (bundle / SIGNATURE_FILE).exists()


def test_the_default_bundle_is_signed_by_the_committed_release_key(keys: dict[str, Path]):
    assert load_bundle(DEFAULT_BUNDLE, trusted_key=RELEASE_KEY).signed_by
    with pytest.raises(BundleError, match="does not verify"):  # any other key fails it
        load_bundle(DEFAULT_BUNDLE, trusted_key=keys["theirs.pub"])
