"""Canaries against pinned model versions: canary sets, pins, runs, drift tests, alerts,
rollback, the gateway-side monitor and shadow mirroring."""
