"""The HTTP API (FastAPI): management under /v1, callbacks, unsubscribe pages, metrics."""
