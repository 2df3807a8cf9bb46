"""A sidecar in its own process on loopback, for the tests and the benchmarks (not part of any wheel).

`SidecarProcess` runs `python -m ltr_sidecar serve` (or another command that
ends in `serve`, such as an image's ENTRYPOINT) on port 0 and takes the address
it bound from its "serving" log line, so no port is picked ahead and lost to a
race. A thread drains the process's output the whole time: a full pipe would
block the server's logging, and with it the server.

`free_port` is for what cannot report its own port (a vLLM server), or for an
address that nobody should be listening on.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

SERVE_COMMAND: tuple[str, ...] = (sys.executable, "-m", "ltr_sidecar", "serve")
# Loopback, a port of its own, no metrics unless asked for, and the JSON log the
# "serving" line is read from. Arguments given to SidecarProcess come after
# these and win (argparse keeps the last value of a flag).
LOOPBACK_DEFAULTS: tuple[str, ...] = ("--host", "127.0.0.1", "--port", "0", "--metrics-port", "-1", "--log-format", "json", "--log-level", "info")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on `host` at the time of the call."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def grpc_address(host: str, port: int) -> str:
    """HOST:PORT as gRPC targets spell it, with an IPv6 host in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class SidecarStartError(RuntimeError):
    """The sidecar exited, or did not log "serving" in time; `log` holds what it wrote."""

    def __init__(self, message: str, returncode: int | None, log: str):
        super().__init__(f"{message}:\n{log[-4000:]}")
        self.returncode = returncode
        self.log = log


class SidecarProcess:
    """`ltr-sidecar serve` in a subprocess, ready (health SERVING) when the constructor returns.

    `args` are serve flags (`--model`, `--intra-op-threads`, ...); `--log-level`
    must stay at info or debug, where the "serving" line is logged. `env`
    replaces the environment (None: inherit this one). Stop it with `stop()`
    (SIGTERM, the drain an orchestrator would ask for) or `kill()` (SIGKILL,
    a crash), or use it as a context manager.
    """

    def __init__(
        self,
        *args: str,
        command: Sequence[str] = SERVE_COMMAND,
        env: Mapping[str, str] | None = None,
        cwd: str | Path | None = None,
        startup_timeout_s: float = 60.0,
        keep_lines: int = 10_000,
    ):
        self.argv = [*command, *LOOPBACK_DEFAULTS, *args]
        self.lines: deque[str] = deque(maxlen=keep_lines)
        self.serving: dict[str, Any] = {}
        self._ready = threading.Event()
        self.proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=None if env is None else dict(env),
            cwd=cwd,
        )
        self._reader = threading.Thread(target=self._drain, name="sidecar-output", daemon=True)
        self._reader.start()
        try:
            self._wait_serving(startup_timeout_s)
        except BaseException:
            # A failed start, or an interruption (Ctrl-C, a time limit) while waiting: leave no process behind.
            self.kill()
            raise
        host, _, port = str(self.serving["address"]).rpartition(":")
        self.host = host.strip("[]")
        self.port = int(port)
        metrics_port = self.serving.get("metrics_port")
        self.metrics_port: int | None = int(metrics_port) if metrics_port is not None else None

    def _wait_serving(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not self._ready.wait(0.05):
            if self.proc.poll() is not None:
                self._reader.join(5)
                if self._ready.is_set():  # it logged "serving" and then exited
                    return
                raise SidecarStartError(f"the sidecar exited with status {self.proc.returncode} before serving", self.proc.returncode, self.log())
            if time.monotonic() > deadline:
                raise SidecarStartError(f"the sidecar did not log 'serving' within {timeout_s:g} s", None, self.log())

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def target(self) -> str:
        """The gRPC target of the sidecar, e.g. 127.0.0.1:43121."""
        return grpc_address(self.host, self.port)

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            if not self._ready.is_set() and '"serving"' in line:
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(entry, dict) and entry.get("msg") == "serving" and "address" in entry:
                    self.serving = entry
                    self._ready.set()

    def log(self) -> str:
        """Everything the process has written so far (its last `keep_lines` lines)."""
        return "".join(self.lines)

    def wait(self, timeout_s: float = 30.0) -> int:
        """Wait for the process to exit on its own (after a signal sent to `proc`); its exit status."""
        code = self.proc.wait(timeout_s)
        self._reader.join(5)
        return code

    def stop(self, grace_s: float = 30.0) -> int:
        """SIGTERM, then SIGKILL if it has not exited within grace_s; the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.wait()

    def kill(self) -> int:
        """SIGKILL, as a crash would end it; the exit status."""
        if self.proc.poll() is None:
            self.proc.kill()
        return self.wait()

    def __enter__(self) -> SidecarProcess:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

