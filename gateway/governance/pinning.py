"""The gates at canary pin time: a pin freezes a tuple as the version drift is measured against
(and traffic rolls back to), so a tuple that may not serve may not be pinned either.

:func:`check_pin` runs the same gates on the same evidence as serving (:func:`.registry.judge`,
on the tuple the backend serves now) before ``tiergate canary pin`` and
``POST /admin/canary/{model}/pin`` decode anything. The canaries sit below governance in the
layers and do not import it: the CLI and the admin route, which see both, call this first.
"""

from __future__ import annotations

import logging

from gateway.governance.registry import GovernanceDeployment, Verdict, judge
from gateway.kernel.errors import ConflictError, ServiceUnavailableError
from gateway.models.registry import ModelRegistry

log = logging.getLogger("tiergate.governance")


def check_pin(settings: GovernanceDeployment, models: ModelRegistry,
              name: str) -> Verdict | None:
    """Whether ``name``'s served tuple may be pinned: its verdict (``None``: a model that is not
    governed), after logging an override or a warning. Not loaded yet: 503 ``model_loading``.
    Refused: a 409
    :class:`~gateway.kernel.errors.ConflictError` (code ``model_not_validated``) naming the
    failed gates — the request is well formed; the tuple's state forbids it."""
    backend = models.get(name)
    if not backend.started:  # its tuple is known once loaded: gating it now would mislead
        raise ServiceUnavailableError(f"model {name} is {backend.load_status}: pin it once it "
                                      "serves", code="model_loading", retry_after=5.0)
    verdict = judge(settings, models, name)
    if verdict is None:
        return None
    if verdict.status == "refused":
        raise ConflictError(
            f"cannot pin {name}: its tuple {verdict.digest[:19]} fails its gates "
            f"({', '.join(r.gate for r in verdict.failed)}): {verdict.why}; evaluate it "
            "(tiergate eval) or set the model's gate_override", param="model",
            code="model_not_validated")
    if verdict.status == "overridden":
        log.warning("pinning %s despite failed gates (%s): override: %s", name, verdict.why,
                    verdict.override)
    elif verdict.status == "warned":
        log.warning("pinning %s ungated (governance.ungated = warn): %s", name, verdict.why)
    return verdict
