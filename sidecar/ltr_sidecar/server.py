"""Assemble and run the gRPC server: ranker, servicer, health, reflection, metrics, TLS, shutdown."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from ltr_client.api import ranker_pb2 as pb
from .bundle import load_bundle
from .config import ConfigError, ServerConfig
from .metrics import Metrics
from .online_calibration import Calibrator
from .ranker import OnnxRanker
from .request_decoding import lenient_deserializer
from .scoring import Scorer
from .servicer import RankerServicer

log = logging.getLogger(__name__)
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["RankerService"].full_name


def _handlers(servicer: RankerServicer) -> grpc.GenericRpcHandler:
    """Like the generated add_..._to_server, but with deserializers that report bad UTF-8 as INVALID_ARGUMENT."""
    rpcs = {
        "Score": (servicer.Score, pb.ScoreRequest, pb.ScoreResponse),
        "NextBatch": (servicer.NextBatch, pb.NextBatchRequest, pb.NextBatchResponse),
        "ModelInfo": (servicer.ModelInfo, pb.ModelInfoRequest, pb.ModelInfoResponse),
        "Observe": (servicer.Observe, pb.ObserveRequest, pb.ObserveResponse),
    }
    return grpc.method_handlers_generic_handler(
        SERVICE_NAME,
        {
            name: grpc.unary_unary_rpc_method_handler(
                fn, request_deserializer=lenient_deserializer(req), response_serializer=resp.SerializeToString
            )
            for name, (fn, req, resp) in rpcs.items()
        },
    )


def _credentials(config: ServerConfig) -> grpc.ServerCredentials | None:
    if config.tls_cert is None or config.tls_key is None:
        return None
    ca = config.tls_client_ca.read_bytes() if config.tls_client_ca else None
    return grpc.ssl_server_credentials(
        [(config.tls_key.read_bytes(), config.tls_cert.read_bytes())],
        root_certificates=ca,
        require_client_auth=ca is not None,
    )


def _address(host: str, port: int) -> str:
    """HOST:PORT as gRPC spells it, with an IPv6 host in brackets."""
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


def _check_listenable(flags: str, host: str, port: int) -> None:
    """Raise ConfigError naming host:port if no socket can listen there.

    gRPC reports a failed bind only as "Failed to bind" after logging a line of
    its own, so the address is tried first with a plain socket, bound as gRPC
    binds it (SO_REUSEADDR, no SO_REUSEPORT), which gives the reason.
    """
    address = _address(host, port)
    try:
        infos = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise ConfigError(flags, address, f"cannot listen there: {e.strerror}") from e
    reason = "no address to bind"
    for family, kind, proto, _, sockaddr in infos:
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(sockaddr)
                return
            except OSError as e:
                reason = e.strerror or str(e)
    raise ConfigError(flags, address, f"cannot listen there: {reason}")


@dataclass
class SidecarServer:
    """A running sidecar. Build it with `start`, end it with `stop`."""

    config: ServerConfig
    server: grpc.aio.Server
    scorer: Scorer
    health: health.aio.HealthServicer
    metrics: Metrics
    port: int
    metrics_port: int | None
    _stopped: asyncio.Event = field(default_factory=asyncio.Event)

    @classmethod
    async def start(cls, config: ServerConfig, ranker: OnnxRanker | None = None) -> SidecarServer:
        """Bind, load the model (unless given), warm it up, then report SERVING.

        Raises ConfigError naming an address nobody can listen on, BundleError for a bad bundle.
        """
        # Refuse a bad address before spending seconds loading the model.
        _check_listenable("--host/--port", config.host, config.port)
        if config.metrics_port >= 0:
            _check_listenable("--metrics-host/--metrics-port", config.metrics_host, config.metrics_port)
        calibrating = config.calibration == "on"
        ranker = ranker or OnnxRanker(load_bundle(config.model, config.trusted_key), config.providers or None, config.intra_op_threads,
                                      config.max_length, need_embedding=calibrating)
        calibrator = None
        if calibrating:
            if not ranker.embedding_dim:
                raise ValueError(f"--calibration on: {ranker.bundle.model_path} has no pooled embedding output")
            # Loads the state dir; a corrupt file is refused (logged, naming it) and the base ranker serves that model.
            calibrator = Calibrator(ranker.embedding_dim, config.state_dir)
        metrics = Metrics()
        scorer = Scorer(
            ranker,
            cache_size=config.cache_size,
            max_batch_size=config.max_batch_size,
            max_delay_s=config.max_delay_ms / 1e3,
            max_queue=config.max_queue,
            on_batch=metrics.observe_batch,
            calibrator=calibrator,
        )
        metrics.watch(scorer)
        if calibrator is not None:
            metrics.watch_calibration(calibrator)
        metrics.model.labels(ranker.bundle.model_version, ranker.provider, ranker.bundle.model_sha256).set(1)
        size = config.limits.max_message_bytes
        options = [("grpc.max_receive_message_length", size), ("grpc.max_send_message_length", size), ("grpc.so_reuseport", 0)]
        if config.max_connection_age_s > 0:
            age_ms = int(config.max_connection_age_s * 1000)
            options += [("grpc.max_connection_age_ms", age_ms), ("grpc.max_connection_age_grace_ms", max(age_ms // 10, 1000))]
        server = grpc.aio.server(options=options)
        servicer = RankerServicer(scorer, config.limits, config.guard, metrics)
        server.add_generic_rpc_handlers([_handlers(servicer)])
        health_servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
        # The health service starts out SERVING; it must not say so before the model is warm.
        for service in ("", SERVICE_NAME):
            await health_servicer.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)

        address = _address(config.host, config.port)
        creds = _credentials(config)
        try:
            port = server.add_secure_port(address, creds) if creds else server.add_insecure_port(address)
        except RuntimeError:  # gRPC's "Failed to bind" (the check above makes this a lost race)
            port = 0
        if port == 0:
            raise ConfigError("--host/--port", address, "cannot listen there")
        try:
            metrics_port = metrics.serve_http(config.metrics_host, config.metrics_port) if config.metrics_port >= 0 else None
        except OSError as e:
            address = _address(config.metrics_host, config.metrics_port)
            raise ConfigError("--metrics-host/--metrics-port", address, f"cannot listen there: {e.strerror or e}") from e
        try:
            # Health answers NOT_SERVING while the model warms up; calls that
            # come early wait in the queue.
            await server.start()
            warmup_s = await asyncio.to_thread(scorer.warm_up)
            metrics.warmup.set(warmup_s)
            log.info("warmed up", extra={"seconds": round(warmup_s, 3), "batch_sizes": [1, config.max_batch_size], "tokens": ranker.max_length})
            scorer.start()
            for service in ("", SERVICE_NAME):
                await health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
        except BaseException:
            await server.stop(0)
            metrics.close()
            raise
        log.info(
            "serving",
            extra={
                "address": f"{config.host}:{port}",
                "tls": creds is not None,
                "mtls": config.tls_client_ca is not None,
                "metrics_port": metrics_port,
                "model_version": ranker.bundle.model_version,
                "provider": ranker.provider,
            },
        )
        return cls(config, server, scorer, health_servicer, metrics, port, metrics_port)

    async def stop(self, grace_s: float | None = None) -> None:
        """Health goes NOT_SERVING first, in-flight calls drain for up to grace_s, then everything stops."""
        if self._stopped.is_set():
            return
        grace = self.config.grace_s if grace_s is None else grace_s
        log.info("shutting down", extra={"grace_s": grace})
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
        await self.scorer.stop()
        if self.scorer.calibrator is not None:
            await asyncio.to_thread(self.scorer.calibrator.stop)  # persists every model's state
        self.metrics.close()
        self._stopped.set()
        log.info("stopped")

    async def wait(self) -> None:
        await self._stopped.wait()


async def serve(config: ServerConfig) -> None:
    """Run until SIGTERM or SIGINT, then shut down gracefully."""
    sidecar = await SidecarServer.start(config)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: asyncio.ensure_future(sidecar.stop()))
    await sidecar.wait()
