"""The local stack that `make dev` runs: Redis, a worker and the gateway as local processes."""
