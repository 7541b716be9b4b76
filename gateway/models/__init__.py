"""The model registry: the configured models, each behind its resilience guard, and the dispatcher
that calls them with retries and fallbacks."""
