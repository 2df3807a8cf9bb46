"""`ltr-sidecar health`: ask a sidecar's grpc.health.v1 service, exit 0 if SERVING.

For container HEALTHCHECKs and scripts, where no grpc_health_probe binary is
at hand. Kubernetes should use its native gRPC probes instead.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def check(target: str, service: str = "", timeout_s: float = 2.0, ca: Path | None = None) -> str:
    """The serving status name (e.g. "SERVING"), or the gRPC error code name if the call failed."""
    creds = grpc.ssl_channel_credentials(ca.read_bytes()) if ca else None
    channel = grpc.secure_channel(target, creds) if creds else grpc.insecure_channel(target)
    with channel:
        try:
            resp = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout_s)
        except grpc.RpcError as e:
            return e.code().name
    return health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)


def main(args: argparse.Namespace) -> int:
    status = check(args.target, args.service, args.timeout, args.tls_ca)
    print(status, file=sys.stderr if status != "SERVING" else sys.stdout)
    return 0 if status == "SERVING" else 1
