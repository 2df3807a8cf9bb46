"""The Node.js client (clients/node) against a real sidecar: the API is language-agnostic.

Runs `node --test` in clients/node with LTR_TARGET pointing at a sidecar
started by the `sidecar` fixture. Installs the package's locked dependencies
with `npm ci` first when node_modules is missing (needs the npm registry once).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

NODE_CLIENT = Path(__file__).resolve().parents[1] / "clients" / "node"


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"`{name}` not found on PATH: the Node.js client test needs Node.js >= 18 and npm", pytrace=False)
    return path


@pytest.fixture(scope="module")
def node_client() -> Path:
    """clients/node with its dependencies installed."""
    node = _tool("node")
    if not (NODE_CLIENT / "node_modules" / "@grpc" / "grpc-js").is_dir():
        npm = _tool("npm")
        proc = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"], cwd=NODE_CLIENT, capture_output=True, text=True, timeout=300
        )
        if proc.returncode != 0:
            pytest.fail(f"`npm ci` in {NODE_CLIENT} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}", pytrace=False)
    version = subprocess.run([node, "--version"], capture_output=True, text=True).stdout.strip()
    if int(version.lstrip("v").split(".")[0]) < 18:
        pytest.fail(f"the Node.js client needs Node.js >= 18, found {version}", pytrace=False)
    return NODE_CLIENT


def test_node_client_passes_its_tests_against_a_live_sidecar(node_client, sidecar):
    env = {**os.environ, "LTR_TARGET": sidecar.target, "NO_COLOR": "1"}
    proc = subprocess.run(
        [shutil.which("node") or "node", "--test", "--test-reporter=spec"],
        cwd=node_client,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    output = f"{proc.stdout}\n{proc.stderr}"
    assert proc.returncode == 0, f"node --test failed ({proc.returncode}):\n{output}"
    # The live-sidecar suite must have run, not been skipped.
    assert "LTR_TARGET is not set" not in output and "Score: brief prompts" in output, output
