"""What a routing decision was, for the response headers, metrics and the decode record."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Mode = str
"""A routing mode: a name in ``router.strategies.ROUTING_MODES`` (``fixed``, ``prompt``, ...)."""
Tier = Literal["small", "large"]


@dataclass(slots=True)
class Decision:
    route: str
    mode: Mode
    tier: Tier
    """The tier that answered."""
    model: str
    """The model that answered."""
    verifier_id: str | None = None
    verifier_sha256: str | None = None
    feature_digest: str | None = None
    """sha256 of the verifier's input features, so a replay can show it saw the same input."""
    score: float | None = None
    """The verifier's routing score: P(the small answer is not good enough), or the expected
    accuracy gain of escalating (P(large right) - P(small right)), per its manifest."""
    threshold: float | None = None
    """Escalate when score >= threshold."""
    escalated: bool = False
    candidates: list[str] = field(default_factory=list)
    """Models that produced an answer, in call order (a cascade's rejected small answer too)."""

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)
