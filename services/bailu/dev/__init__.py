"""Developer tooling: the local stack that `make dev` runs (Redis, a worker and the gateway as local
processes) and the README's configuration reference rendered from every service's settings (`settings_doc`)."""
