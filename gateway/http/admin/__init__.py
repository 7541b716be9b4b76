"""The admin API, mounted once at ``/admin`` behind the admin keys (``auth.admin_keys``; none
configured: every admin route answers 403): the routes, their curves and thresholds, decode
records, their replay and the audit, canaries and their runs, the tuple registry, client keys,
what routing saves, the trail of admin actions. :data:`ENDPOINTS` is the whole mount."""

from __future__ import annotations

from gateway.http.admin import (
    canary,
    events,
    keys,
    records,
    registry,
    routes,
    savings,
    thresholds,
)
from gateway.http.frontdoor import mount

ENDPOINTS = mount("/admin", [*routes.ENDPOINTS, *thresholds.ENDPOINTS, *records.ENDPOINTS,
                             *canary.ENDPOINTS, *registry.ENDPOINTS, *keys.ENDPOINTS,
                             *savings.ENDPOINTS, *events.ENDPOINTS],
                  access="admin")
