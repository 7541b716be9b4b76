"""Serving: an OpenAI request in, a served response out — the serving object
(:mod:`.service`), what accounts each request (:mod:`.accounting`: headers, metrics, prices,
listeners), generated answers whole or streamed (:mod:`.streams`) and the forwarded Responses
API (:mod:`.forwarding`)."""

from gateway.serving.accounting import COST_HEADER, Served, cost_header
from gateway.serving.service import OpenAIServing

__all__ = ["COST_HEADER", "OpenAIServing", "Served", "cost_header"]
