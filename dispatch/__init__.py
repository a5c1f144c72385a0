"""dispatch: send email campaigns through any provider and track every message."""
