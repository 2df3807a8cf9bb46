"""Bundles load only when every file matches its recorded sha256."""

import json
import shutil

import pytest

from ltr_sidecar.bundle import BundleError, load_bundle


@pytest.fixture
def bundle_copy(tiny_bundle, tmp_path):
    return shutil.copytree(tiny_bundle, tmp_path / "copy")


def test_valid_bundle_loads_with_its_metadata(tiny_bundle):
    b = load_bundle(tiny_bundle)
    assert b.name == "tiny-test-ranker" and b.max_length == 64
    assert len(b.model_sha256) == 64
    assert b.model_version.startswith("tiny-test-ranker@")


@pytest.mark.parametrize("name", ["model.onnx", "tokenizer.json"])
def test_a_corrupted_file_is_refused_with_an_error_naming_it(bundle_copy, name):
    path = bundle_copy / name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=name + ".*sha256 mismatch"):
        load_bundle(bundle_copy)


def test_a_missing_file_is_refused(bundle_copy):
    (bundle_copy / "tokenizer.json").unlink()
    with pytest.raises(BundleError, match="tokenizer.json.*missing"):
        load_bundle(bundle_copy)


def test_a_directory_without_ranker_json_is_refused(tmp_path):
    with pytest.raises(BundleError, match="ranker.json: not found"):
        load_bundle(tmp_path)


def test_file_names_with_paths_are_refused(bundle_copy):
    meta = json.loads((bundle_copy / "ranker.json").read_text())
    meta["files"]["../evil.onnx"] = {"sha256": "0" * 64}
    (bundle_copy / "ranker.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="must not contain a path"):
        load_bundle(bundle_copy)


@pytest.mark.parametrize("head_tokens", [-1, 64, 1.5, "8", True])
def test_a_truncation_head_outside_the_bundles_length_is_refused_naming_the_field(bundle_copy, head_tokens):
    meta = json.loads((bundle_copy / "ranker.json").read_text())
    meta["truncation"] = {"head_tokens": head_tokens}
    (bundle_copy / "ranker.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="truncation.head_tokens"):
        load_bundle(bundle_copy)


def test_a_bundle_without_truncation_reads_the_head_only(tiny_bundle):
    assert load_bundle(tiny_bundle).head_tokens == 0
