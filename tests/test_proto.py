"""The API definition: buf-lint clean, and the committed stubs match it."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUF = ROOT / "tools" / "buf" / "node_modules" / ".bin" / "buf"


def test_generated_stubs_match_the_proto():
    result = subprocess.run([sys.executable, str(ROOT / "tools" / "gen_proto.py"), "--check"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_proto_is_clean_under_buf_default_lint_rules():
    assert BUF.exists(), "buf is not installed: run `npm ci --prefix tools/buf`"
    result = subprocess.run([str(BUF), "lint"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
