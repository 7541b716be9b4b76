"""Routing policy: which tier answers a request (fixed, prompt-only, cascade)."""
