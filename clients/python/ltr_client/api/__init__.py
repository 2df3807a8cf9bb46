"""Generated protobuf and gRPC stubs for ltr.v1 (see tools/gen_proto.py)."""
