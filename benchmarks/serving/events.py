"""The benchmark's own log lines: one JSON object per line on stderr."""

from __future__ import annotations

import json
import sys
from typing import Any


def log(event: str, **fields: Any) -> None:
    """One JSON object per line on stderr. Never prompt text: ids and numbers only."""
    print(json.dumps({"event": event, **fields}, default=str), file=sys.stderr, flush=True)
