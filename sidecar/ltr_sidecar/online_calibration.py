"""Online calibration: learn each served model's answer lengths from its finished requests. No gRPC here.

Per served model (the `model` an engine names in Score and Observe) this keeps
a bounded reservoir of the latest observations, each one *derived features*
and a length, never the prompt:

    pooled embedding (float32 [dim]), base score, prompt tokens read,
    output tokens, censored (cut by max_tokens or aborted: a lower bound)

When enough new observations have arrived (:func:`refit_due`) a background
thread refits with the very fit `ltr-sidecar adapt` runs
(:func:`ltr_sidecar.calibration.fit_calibration`) and promotes the candidate
only if it ranks the held-out observations better than the calibration
serving now (the base ranker at first), with the same bootstrap test. Every
promotion gets a new version string; every calibrated score carries it.

State persists in a state directory, one pair of files per model:

    <key>.json   model name, version, counters, taus, the adapter, and the
                 sha256 of the reservoir file; with a sha256 of its own body
    <key>-<sha256[:16]>.npz   the reservoir arrays (numpy, no pickle)

(<key> is a hash of the model name, so any name is a safe file name.) Both
are written to a temporary name and renamed, the arrays first, so a crash
leaves the old pair or the new one. A file whose hash does not match is
refused with an error naming it, and that model starts again from the base.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import tempfile
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .calibration import Adapter, AdapterError, Verdict, fit_calibration

log = logging.getLogger(__name__)

STATE_FORMAT = "ltr-calibration-state/1"
# Observations kept per served model: the latest ones (a ring buffer).
RESERVOIR = 10_000
# A refit runs once this many new observations have come in, or as many as
# there were at the previous refit (so at 50, 100, 200, 400, ...), but never
# waits for more than REFIT_EVERY_MAX.
REFIT_MIN_NEW = 50
REFIT_EVERY_MAX = 1000
# Held-out observations judged per refit: the bootstrap's cost grows with its square.
MAX_HELD_OUT = 1000
# Served models tracked; more names than this are refused (each costs a reservoir).
MAX_MODELS = 64


class StateError(ValueError):
    """A state file is missing a piece, malformed, or does not match its recorded sha256. The message names it."""


@dataclass(frozen=True)
class Features:
    """What the ranker computed for one prompt: all a calibration needs of it."""

    embedding: np.ndarray  # float32 [dim]
    base_score: float
    prompt_tokens: int


@dataclass(frozen=True)
class Status:
    """One served model's calibration, as ModelInfo and /metrics report it."""

    model: str
    version: str  # "" while the base ranker serves
    observations: int
    held: int
    base_tau: float  # NaN before the first refit
    serving_tau: float
    refits: int
    promotions: int


def refit_due(new: int, at_last_fit: int) -> bool:
    """Whether `new` observations since a refit over `at_last_fit` of them are worth another one."""
    return new >= max(REFIT_MIN_NEW, min(at_last_fit, REFIT_EVERY_MAX))


def model_key(model: str) -> str:
    return hashlib.sha256(model.encode("utf-8")).hexdigest()[:16]


class ModelCalibration:
    """One served model: its reservoir, its serving adapter and version. Thread-safe."""

    def __init__(self, model: str, dim: int, capacity: int = RESERVOIR):
        self.model = model
        self.capacity = capacity
        self.embeddings = np.zeros((capacity, dim), np.float32)
        self.base = np.zeros(capacity, np.float32)
        self.tokens = np.zeros(capacity, np.int32)
        self.lengths = np.zeros(capacity, np.int64)
        self.censored = np.zeros(capacity, bool)
        self.held = 0
        self.next = 0  # ring position of the next observation
        self.observations = 0
        self.at_last_fit = 0
        self.new_since_fit = 0
        self.refits = 0
        self.promotions = 0
        self.adapter: Adapter | None = None
        self.version = ""
        self.base_tau = math.nan
        self.serving_tau = math.nan
        self.last_verdict: dict[str, Any] = {}
        self.lock = threading.Lock()

    def add(self, features: list[Features], lengths: list[int], censored: list[bool]) -> None:
        with self.lock:
            for f, length, cut in zip(features, lengths, censored):
                i = self.next
                self.embeddings[i] = f.embedding
                self.base[i], self.tokens[i], self.lengths[i], self.censored[i] = f.base_score, f.prompt_tokens, length, cut
                self.next = (i + 1) % self.capacity
                self.held = min(self.held + 1, self.capacity)
            self.observations += len(features)
            self.new_since_fit += len(features)

    def due(self) -> bool:
        with self.lock:
            return refit_due(self.new_since_fit, self.at_last_fit)

    def serving(self) -> tuple[Adapter | None, str]:
        with self.lock:
            return self.adapter, self.version

    def refit(self, seed: int) -> Verdict:
        """Fit a candidate on a copy of the reservoir (no lock held while fitting) and promote it if it wins."""
        with self.lock:
            n = self.held
            arrays = (self.embeddings[:n].copy(), self.base[:n].copy(), self.tokens[:n].copy(), self.lengths[:n].copy(), self.censored[:n].copy())
            incumbent = self.adapter
            self.at_last_fit, self.new_since_fit = n, 0
        verdict = fit_calibration(*arrays, seed=seed, incumbent=incumbent, max_held_out=MAX_HELD_OUT)
        with self.lock:
            self.refits += 1
            self.last_verdict = verdict.as_dict()
            if verdict.base_tau is not None:
                self.base_tau = verdict.base_tau
                serving = verdict.incumbent_tau if incumbent is not None else verdict.base_tau
                self.serving_tau = serving if serving is not None else math.nan
            if verdict.adapter is not None and self.adapter is incumbent:
                self.adapter = verdict.adapter
                self.promotions += 1
                self.version = f"{self.promotions}.{verdict.adapter.digest()}"
                self.serving_tau = verdict.candidate_tau if verdict.candidate_tau is not None else math.nan
        return verdict

    def status(self) -> Status:
        with self.lock:
            return Status(self.model, self.version, self.observations, self.held, self.base_tau, self.serving_tau, self.refits, self.promotions)

    # -- persistence -------------------------------------------------------------

    def save(self, state_dir: Path) -> Path:
        """Write this model's state (arrays first, then the JSON that names their hash), each atomically."""
        key = model_key(self.model)
        with self.lock:
            n = self.held
            # Oldest first, so a reload continues the ring where it stopped.
            order = np.roll(np.arange(n), -self.next) if n == self.capacity else np.arange(n)
            arrays: dict[str, Any] = {"embeddings": self.embeddings[order], "base": self.base[order], "tokens": self.tokens[order],
                      "lengths": self.lengths[order], "censored": self.censored[order]}
            body = {
                "model": self.model, "version": self.version, "observations": self.observations, "at_last_fit": self.at_last_fit,
                "new_since_fit": self.new_since_fit, "refits": self.refits, "promotions": self.promotions,
                "base_tau_b": _finite_or_none(self.base_tau), "serving_tau_b": _finite_or_none(self.serving_tau),
                "adapter": self.adapter.to_json() if self.adapter is not None else None, "last_verdict": self.last_verdict,
            }
        arrays_path = _atomic_write(state_dir, f"{key}.npz.tmp", lambda f: np.savez(f, **arrays))
        digest = _sha256(arrays_path)
        final_arrays = state_dir / f"{key}-{digest[:16]}.npz"
        os.replace(arrays_path, final_arrays)
        body["reservoir"] = {"file": final_arrays.name, "sha256": digest, "rows": int(n)}
        text = json.dumps({"format": STATE_FORMAT, "body": body, "sha256": _body_digest(body)}, indent=1) + "\n"
        json_path = _atomic_write(state_dir, f"{key}.json", lambda f: f.write(text.encode("utf-8")))
        for stale in state_dir.glob(f"{key}-*.npz"):
            if stale != final_arrays:
                stale.unlink(missing_ok=True)
        return json_path

    @classmethod
    def load(cls, path: Path, dim: int, capacity: int = RESERVOIR) -> ModelCalibration:
        """Read one model's state; raise StateError naming the file that is wrong."""
        try:
            data = json.loads(path.read_bytes())
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
            raise StateError(f"{path}: cannot read calibration state: {e}") from e
        if not isinstance(data, dict) or data.get("format") != STATE_FORMAT or not isinstance(data.get("body"), dict):
            raise StateError(f"{path}: not a calibration state file (format {STATE_FORMAT!r})")
        body = data["body"]
        if data.get("sha256") != _body_digest(body):
            raise StateError(f"{path}: sha256 mismatch; the calibration state is corrupt")
        reservoir = body.get("reservoir") or {}
        arrays_path = path.parent / str(reservoir.get("file", ""))
        if Path(str(reservoir.get("file", ""))).name != reservoir.get("file") or not arrays_path.is_file():
            raise StateError(f"{arrays_path}: named by {path} but missing")
        if _sha256(arrays_path) != reservoir.get("sha256"):
            raise StateError(f"{arrays_path}: sha256 mismatch (expected {reservoir.get('sha256')}); the calibration state is corrupt")
        try:
            with np.load(arrays_path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in ("embeddings", "base", "tokens", "lengths", "censored")}
            adapter = Adapter.from_json(body["adapter"], str(path)) if body.get("adapter") is not None else None
            self = cls(str(body["model"]), dim, capacity)
            emb = arrays["embeddings"]
            if emb.ndim != 2 or emb.shape[1] != dim or (adapter is not None and adapter.dim != dim):
                raise StateError(f"{arrays_path}: embeddings of width {emb.shape[-1]}, the served model's are {dim} (another bundle's state?)")
            keep = slice(max(0, len(emb) - capacity), len(emb))
            n = len(emb[keep])
            self.embeddings[:n], self.base[:n], self.tokens[:n] = emb[keep], arrays["base"][keep], arrays["tokens"][keep]
            self.lengths[:n], self.censored[:n] = arrays["lengths"][keep], arrays["censored"][keep]
            self.held, self.next = n, n % capacity
            self.observations, self.at_last_fit, self.new_since_fit = int(body["observations"]), int(body["at_last_fit"]), int(body["new_since_fit"])
            self.refits, self.promotions, self.version = int(body["refits"]), int(body["promotions"]), str(body["version"])
            self.adapter = adapter
            self.base_tau = _nan_if_none(body.get("base_tau_b"))
            self.serving_tau = _nan_if_none(body.get("serving_tau_b"))
            self.last_verdict = body.get("last_verdict") or {}
        except StateError:
            raise
        except (AdapterError, KeyError, TypeError, ValueError, OSError) as e:
            raise StateError(f"{path}: malformed calibration state: {e}") from e
        return self


class Calibrator:
    """Every served model's calibration, a background refit thread, and the state directory."""

    def __init__(self, dim: int, state_dir: Path | None = None, capacity: int = RESERVOIR, background: bool = True, seed: int = 0):
        self.dim = dim
        self.state_dir = state_dir
        self.capacity = capacity
        self.seed = seed
        self.models: dict[str, ModelCalibration] = {}
        self.load_errors: list[str] = []
        self.refit_seconds: list[float] = []
        self._lock = threading.Lock()
        self._pending: set[str] = set()
        self._wake = threading.Condition(self._lock)
        self._stopping = False
        self._thread: threading.Thread | None = None
        if state_dir is not None:
            self._load_all(state_dir)
        if background:
            self._thread = threading.Thread(target=self._work, name="ltr-calibration-refit", daemon=True)
            self._thread.start()

    # -- what scoring asks ---------------------------------------------------------

    def serving(self, model: str) -> tuple[Adapter | None, str]:
        """The adapter serving `model` now (None: the base ranker) and its version ("" for the base)."""
        calibration = self.models.get(model)
        return calibration.serving() if calibration is not None else (None, "")

    # -- what Observe feeds -------------------------------------------------------

    def observe(self, model: str, features: list[Features], lengths: list[int], censored: list[bool]) -> int:
        """Add finished requests of `model`; schedule a refit if due. Returns how many were added."""
        if not features:
            return 0
        with self._lock:
            calibration = self.models.get(model)
            if calibration is None:
                if len(self.models) >= MAX_MODELS:
                    raise ValueError(f"more than {MAX_MODELS} served models")
                calibration = self.models[model] = ModelCalibration(model, self.dim, self.capacity)
        calibration.add(features, lengths, censored)
        if calibration.due():
            with self._lock:
                self._pending.add(model)
                self._wake.notify()
        return len(features)

    def refit_now(self, model: str) -> Verdict:
        """Refit one model in this thread (tests, and the background worker), then persist it."""
        started = time.perf_counter()
        calibration = self.models[model]
        verdict = calibration.refit(self.seed + calibration.refits)
        self.refit_seconds.append(time.perf_counter() - started)
        del self.refit_seconds[:-100]
        log.info("calibration refit", extra={"served_model": model, "promoted": verdict.promoted, "version": calibration.version,
                                             "observations": verdict.observations, "reason": verdict.reason})
        if self.state_dir is not None:
            calibration.save(self.state_dir)
        return verdict

    def statuses(self) -> list[Status]:
        return [c.status() for c in list(self.models.values())]

    @property
    def refitting(self) -> int:
        """Models waiting for a refit (0 when idle)."""
        return len(self._pending)

    def save_all(self) -> None:
        if self.state_dir is not None:
            for calibration in list(self.models.values()):
                calibration.save(self.state_dir)

    def stop(self) -> None:
        """End the refit thread (after the refit it may be running) and persist every model."""
        with self._lock:
            self._stopping = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join()
        self.save_all()

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no refit is pending or running (tests)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with self._lock:
                if not self._pending and not self._busy:
                    return True
            time.sleep(0.02)
        return False

    _busy = False

    def _work(self) -> None:
        while True:
            with self._lock:
                while not self._pending and not self._stopping:
                    self._wake.wait()
                if self._stopping:
                    return
                model = self._pending.pop()
                self._busy = True
            try:
                self.refit_now(model)
            except Exception:  # a failed refit leaves the serving version; the next due one tries again
                log.exception("calibration refit failed", extra={"served_model": model})
            finally:
                with self._lock:
                    self._busy = False

    def _load_all(self, state_dir: Path) -> None:
        for path in sorted(state_dir.glob("*.json")):
            try:
                calibration = ModelCalibration.load(path, self.dim, self.capacity)
            except StateError as e:
                # Refused: that model starts again from the base ranker; the file stays until its next save replaces it.
                self.load_errors.append(str(e))
                log.error("refusing calibration state: %s; the base ranker serves that model", e)
                continue
            self.models[calibration.model] = calibration


def check_state_dir(state_dir: Path) -> None:
    """Create the directory if needed and prove it writable; raise OSError otherwise."""
    state_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=state_dir, prefix=".probe-"):
        pass


def features_from(embeddings: np.ndarray, base: Iterable[float], tokens: Iterable[int]) -> list[Features]:
    return [Features(e, float(b), int(t)) for e, b, t in zip(embeddings, base, tokens)]


def _atomic_write(state_dir: Path, name: str, write: Any) -> Path:
    """Write to a temporary file in `state_dir`, fsync, rename to `name`: readers see the old file or the whole new one."""
    fd, tmp = tempfile.mkstemp(dir=state_dir, prefix=f".{name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, state_dir / name)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return state_dir / name


def _sha256(path: Path) -> str:
    from .bundle import sha256_file

    return sha256_file(path)


def _body_digest(body: Any) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode("utf-8")).hexdigest()


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _nan_if_none(value: Any) -> float:
    return math.nan if value is None else float(value)
