"""The admin API, mounted once at ``/admin`` behind the admin keys (``auth.admin_keys``; none
configured: every admin route answers 403): route thresholds, decode records and the audit,
canaries, the tuple registry, client keys, what routing saves. :data:`ENDPOINTS` is the whole
mount."""

from __future__ import annotations

from gateway.http.admin import canary, keys, records, registry, savings, thresholds
from gateway.http.frontdoor import mount

ENDPOINTS = mount("/admin", [*thresholds.ENDPOINTS, *records.ENDPOINTS, *canary.ENDPOINTS,
                              *registry.ENDPOINTS, *keys.ENDPOINTS, *savings.ENDPOINTS],
                  access="admin")
