"""ltr-sidecar: a gRPC scheduling sidecar that ranks LLM requests by predicted output length."""

__version__ = "0.1.0"
