"""Provider adapters and callback parsers. Knows nothing of Celery, Redis or the API."""
