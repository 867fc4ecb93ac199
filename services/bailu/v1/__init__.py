"""Generated protobuf and gRPC code for the `bailu.v1` API (`make proto`; do not edit)."""
