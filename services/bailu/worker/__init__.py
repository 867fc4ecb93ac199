"""The inference worker: a gRPC server over a pluggable generation engine."""
