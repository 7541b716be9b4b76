"""Canary sets, graders and drift checks against pinned model versions."""
