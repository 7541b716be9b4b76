"""What routing saves, from the decode records: per route, its requests, escalation share, what
it cost and what always-large and always-small would have cost, and the quality it keeps.

``tiergate report`` prints it (section ``savings``, :mod:`gateway.cli.report`) and
``GET /admin/savings`` returns it. It adds up: every figure is a sum over the window's records
(a record counts in the window by ``received_at``), and the totals are the sums of the routes.

**Actual** is what the records say each call cost (``calls[].cost.usd``, priced when the call
was made). **Counterfactuals** (a route with a small and a large tier):

- *always-large*: a call the large model made is counted at what it cost; a request it did not
  answer is priced as if it had, on the tokens of the call that answered (the small model's
  prompt and completion tokens) at the large model's *configured* prices. A ``serving-time``
  model's seconds for those tokens: its observed seconds per completion token over the
  window's calls it made, on any route (no call of it in the window: not available);
- *always-small*: the same rule the other way round (a cascade's small call was made for every
  request: always-small is what those calls cost).

**Quality**, when the sources are there: the latest canary run in the window of each tier (pass
rate per slice of its canary set, :mod:`canary.runs`); the shadow pairs of the route's small
answers mirrored to its large model (``[shadow.mirrors]``) give the share of small answers that
*agree* with the large one; ``kept`` is then ``escalated + (1 - escalated) * agreement``, the
share of answers the route gives as always-large would. Graded (``tiergate report --task-set``):
records whose input is an item of a task set are graded with its grader — accuracy per slice of
the route, and of its large model on the same items where the window holds its answers (requests
sent to it directly, or a cascade's escalated calls).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from canary.runs import CanaryRun
from canary.settings import CanarySettings, ShadowSettings
from canary.shadow import ShadowLog
from canary.state import FileCanaryStore
from gateway.backends.settings import ModelSettings
from gateway.evals.tasksets import TaskItem
from gateway.kernel.errors import ConfigError
from gateway.models.cost import CostModel, PriceBook, TokenCounts, Unpriced, cached_tokens
from gateway.records.sinks import RecordQuery, RecordSink
from router.settings import RouteSettings


@dataclass(frozen=True, slots=True)
class RouteTiers:
    """What the report needs of a configured route."""

    mode: str
    small: str
    large: str


@dataclass(slots=True)
class Tokens:
    prompt: int = 0
    completion: int = 0
    cached: int = 0

    def add(self, usage: Mapping[str, Any]) -> None:
        self.prompt += int(usage.get("prompt_tokens") or 0)
        self.completion += int(usage.get("completion_tokens") or 0)
        self.cached += cached_tokens(dict(usage))

    def counts(self) -> TokenCounts:
        return TokenCounts(self.prompt, self.completion, self.cached)


@dataclass(slots=True)
class Tier:
    """One counterfactual: what its model's own calls cost, and the tokens of the requests it
    did not answer, to price at the end (prices are linear: sums can be priced at once)."""

    made_usd: float = 0.0
    unmade: Tokens = field(default_factory=Tokens)
    unmade_requests: int = 0


@dataclass(slots=True)
class Spend:
    """The sums of a route (or of one time bucket of it)."""

    requests: int = 0
    decided: int = 0
    """Records with a routing decision."""
    escalated: int = 0
    calls: int = 0
    tokens: Tokens = field(default_factory=Tokens)
    actual_usd: float = 0.0
    unpriced_calls: int = 0
    """Calls whose record has no cost (recorded before costs, or ``kind = "none"``)."""
    estimated_calls: int = 0
    small: Tier = field(default_factory=Tier)
    large: Tier = field(default_factory=Tier)


class SavingsTally:
    """Counts the window's records (:meth:`record`), then the figures (:meth:`result`)."""

    def __init__(self, prices: Mapping[str, CostModel], routes: Mapping[str, RouteTiers],
                 route: str | None = None, bucket_s: float = 3600.0,
                 items: Iterable[TaskItem] = ()) -> None:
        self.prices = prices
        self.routes = routes
        self.only = route
        self.bucket_s = bucket_s
        self.spend: dict[str, Spend] = {}
        self.buckets: dict[tuple[str, float], Spend] = {}
        self.seconds: dict[str, list[float]] = {}
        """Per model: [seconds, completion tokens] of its calls (for serving-time estimates)."""
        self.items = {_item_key(item.kind, item.prompt, item.messages): item for item in items}
        self.graded: dict[str, dict[str, bool]] = {}
        """Per route (or model), item id -> right (the last answer in the window)."""
        self.graded_large: dict[str, dict[str, bool]] = {}
        """Per model, item id -> right, from its calls on any route (a cascade's escalations)."""
        self.shadow: dict[str, list[int]] = {}
        """Per route: [small answers mirrored to the large model, of them agreeing]."""
        self.canary: dict[str, dict[str, Any]] = {}
        """Per model: its latest canary run in the window (pass rates per slice)."""

    # -- records --------------------------------------------------------------------------------

    def record(self, body: bytes | dict[str, Any]) -> None:
        record = orjson.loads(body) if isinstance(body, bytes | bytearray | memoryview) else body
        route = str(record["route"])
        calls: list[dict[str, Any]] = record.get("calls") or []
        self._grade(route, record, calls)  # every route's: a route's large model's own traffic
        for call in calls:
            cost = call.get("cost") or {}
            seconds = self.seconds.setdefault(str(call["model"].get("name")), [0.0, 0])
            seconds[0] += float(cost.get("seconds", call["timing"]["total_s"]))
            seconds[1] += int(call["usage"].get("completion_tokens") or 0)
        if self.only is not None and route != self.only:
            return
        decision = record.get("decision")
        bucket = float(record["received_at"]) // self.bucket_s * self.bucket_s
        for spend in (self.spend.setdefault(route, Spend()),
                      self.buckets.setdefault((route, bucket), Spend())):
            self._count(spend, route, calls, decision)

    def _count(self, spend: Spend, route: str, calls: list[dict[str, Any]],
               decision: dict[str, Any] | None) -> None:
        spend.requests += 1
        if decision is not None:
            spend.decided += 1
            spend.escalated += bool(decision.get("escalated"))
        tiers = self.routes.get(route)
        by_model: dict[str, float] = {}
        for call in calls:
            spend.calls += 1
            spend.tokens.add(call["usage"])
            cost = call.get("cost")
            if cost is None or cost.get("kind") == "none":
                spend.unpriced_calls += 1
            if cost is not None:
                spend.actual_usd += float(cost["usd"])
                spend.estimated_calls += bool(cost.get("estimated"))
            name = str(call["model"].get("name"))
            by_model[name] = by_model.get(name, 0.0) + float((cost or {}).get("usd", 0.0))
        if tiers is None or not calls:
            return
        for tier, name in ((spend.small, tiers.small), (spend.large, tiers.large)):
            if name in by_model:
                tier.made_usd += by_model[name]
            else:
                tier.unmade.add(calls[-1]["usage"])
                tier.unmade_requests += 1

    def _grade(self, route: str, record: dict[str, Any], calls: list[dict[str, Any]]) -> None:
        if not self.items or not calls or record.get("status") != 200:
            return  # a stream cut short holds part of an answer: not gradable
        given = record.get("input") or {}
        item = self.items.get(_item_key(given.get("kind"), given.get("prompt"),
                                        given.get("messages")))
        if item is None:
            return
        for call in calls:
            text = _text(call)
            if text is not None:
                self.graded_large.setdefault(str(call["model"].get("name")), {})[item.id] = \
                    item.grade(text).passed
        text = _text(calls[-1])
        if text is not None:
            self.graded.setdefault(route, {})[item.id] = item.grade(text).passed

    def shadow_pair(self, route: str, live_model: str, shadow_model: str, agree: bool) -> None:
        """A mirrored pair of the window (``canary.shadow.ShadowPair``): counted when it is a
        route's small answer checked against its large model."""
        tiers = self.routes.get(route)
        if tiers is None or (self.only is not None and route != self.only) \
                or (live_model, shadow_model) != (tiers.small, tiers.large):
            return
        counts = self.shadow.setdefault(route, [0, 0])
        counts[0] += 1
        counts[1] += agree

    def canary_run(self, run: CanaryRun) -> None:
        """A canary run of the window: the latest of each model is the one reported."""
        known = self.canary.get(run.model)
        if known is not None and known["started_at"] >= run.started_at:
            return
        self.canary[run.model] = {
            "started_at": run.started_at, "items": run.overall.items,
            "pass_rate": run.overall.pass_rate, "golden_pass_rate": run.overall.golden_pass_rate,
            "slices": {name: f.pass_rate for name, f in sorted(run.slices.items())}}

    # -- figures --------------------------------------------------------------------------------

    def price(self, model: str, tokens: Tokens) -> float | None:
        """``tokens`` at ``model``'s configured prices (None: not estimable, see the module)."""
        if tokens.prompt == tokens.completion == 0:
            return 0.0
        cost = self.prices.get(model, Unpriced())
        if cost.kind != "serving-time":
            return cost.usd(tokens.counts(), 0.0)
        seconds, completion = self.seconds.get(model, [0.0, 0])
        if completion == 0:
            return None
        return cost.usd(tokens.counts(), seconds / completion * tokens.completion)

    def figures(self, spend: Spend, route: str) -> dict[str, Any]:
        tiers = self.routes.get(route)
        out: dict[str, Any] = {
            "requests": spend.requests, "decided": spend.decided, "escalated": spend.escalated,
            "escalation_share": spend.escalated / spend.decided if spend.decided else None,
            "calls": spend.calls,
            "tokens": {"prompt": spend.tokens.prompt, "completion": spend.tokens.completion,
                       "cached": spend.tokens.cached},
            "actual_usd": spend.actual_usd, "unpriced_calls": spend.unpriced_calls,
            "estimated_calls": spend.estimated_calls,
            "always_large_usd": None, "always_small_usd": None}
        if tiers is not None:
            for key, tier, model in (("always_large_usd", spend.large, tiers.large),
                                     ("always_small_usd", spend.small, tiers.small)):
                unmade = self.price(model, tier.unmade)
                out[key] = None if unmade is None else tier.made_usd + unmade
            out.update(mode=tiers.mode, small=tiers.small, large=tiers.large)
        large = out["always_large_usd"]
        out["saved_usd"] = None if large is None else large - spend.actual_usd
        out["cost_vs_large"] = spend.actual_usd / large if large else None
        return out

    def quality(self, route: str, escalation: float | None) -> dict[str, Any]:
        out: dict[str, Any] = {"canary": None, "shadow": None, "graded": None}
        tiers = self.routes.get(route)
        if tiers is not None and (tiers.small in self.canary or tiers.large in self.canary):
            out["canary"] = {"small": self.canary.get(tiers.small),
                             "large": self.canary.get(tiers.large)}
        mirrored = self.shadow.get(route)
        if mirrored and mirrored[0]:
            agreement = mirrored[1] / mirrored[0]
            out["shadow"] = {
                "mirrored": mirrored[0], "agreeing": mirrored[1], "agreement": agreement,
                "kept": None if escalation is None
                else escalation + (1 - escalation) * agreement}
        graded = self.graded.get(route)
        if graded:  # the large model's answers: its calls on any route (asked directly, or a
            # cascade's escalations)
            large = self.graded_large.get(tiers.large, {}) if tiers else {}
            out["graded"] = _graded(graded, large, self.items)
        return out

    def result(self) -> dict[str, Any]:
        routes = {}
        for route in sorted(self.spend):
            figures = self.figures(self.spend[route], route)
            figures["quality"] = self.quality(route, figures["escalation_share"])
            routes[route] = figures
        total = Spend()
        for spend in self.spend.values():
            total.requests += spend.requests
            total.calls += spend.calls
            total.actual_usd += spend.actual_usd
            total.decided += spend.decided
            total.escalated += spend.escalated
        series = [{"route": route, "start": start,
                   **{k: v for k, v in self.figures(spend, route).items()
                      if k in ("requests", "escalation_share", "actual_usd", "always_large_usd",
                               "always_small_usd")}}
                  for (route, start), spend in sorted(self.buckets.items(),
                                                      key=lambda kv: (kv[0][1], kv[0][0]))]
        return {"routes": routes, "totals": {"requests": total.requests, "calls": total.calls,
                                             "actual_usd": total.actual_usd},
                "bucket_s": self.bucket_s, "series": series}


def _text(call: dict[str, Any]) -> str | None:
    choices = call.get("choices") or []
    text = choices[0].get("text") if choices else None
    return text if isinstance(text, str) else None  # redacted: a digest, not gradable


def _item_key(kind: Any, prompt: Any, messages: Any) -> tuple[Any, ...]:
    if kind == "chat" and messages is not None:
        return ("chat", *((_field(m, "role"), _field(m, "content")) for m in messages))
    return ("completion", prompt if isinstance(prompt, str) else None)


def _field(message: Any, name: str) -> Any:
    return message.get(name) if isinstance(message, dict) else getattr(message, name, None)


def _graded(route: dict[str, bool], large: dict[str, bool],
            items: Mapping[tuple[Any, ...], TaskItem]) -> dict[str, Any]:
    """Accuracy per slice of the route, and of the large model on the same items."""
    slice_of = {item.id: item.slice for item in items.values()}
    slices: dict[str, dict[str, Any]] = {}
    for name in [*sorted({slice_of[i] for i in route}), "ALL"]:
        ids = [i for i in route if name == "ALL" or slice_of[i] == name]
        both = [i for i in ids if i in large]
        accuracy = sum(route[i] for i in ids) / len(ids)
        route_on_both = sum(route[i] for i in both) / len(both) if both else None
        large_on_both = sum(large[i] for i in both) / len(both) if both else None
        slices[name] = {
            "items": len(ids), "accuracy": accuracy, "compared": len(both),
            "large_accuracy": large_on_both,
            "kept": (route_on_both / large_on_both)
            if route_on_both is not None and large_on_both else None}
    return slices


class SavingsDeployment(Protocol):
    """What the savings figures read of the gateway's settings (:class:`gateway.settings.Settings`
    is one)."""

    @property
    def models(self) -> Mapping[str, ModelSettings]: ...
    @property
    def routes(self) -> Mapping[str, RouteSettings]: ...
    @property
    def shadow(self) -> ShadowSettings: ...
    @property
    def canary(self) -> CanarySettings: ...


def tally_for(settings: SavingsDeployment, route: str | None = None, bucket_s: float = 3600.0,
              items: Iterable[TaskItem] = ()) -> SavingsTally:
    """A tally priced and routed as ``settings`` configure."""
    prices = PriceBook(settings.models).models
    routes = {name: RouteTiers(r.mode, r.small, r.large) for name, r in settings.routes.items()}
    return SavingsTally(prices, routes, route, bucket_s, items)


async def collect_savings(settings: SavingsDeployment, sink: RecordSink, since: float | None,
                          until: float, route: str | None = None, bucket_s: float = 3600.0,
                          items: Iterable[TaskItem] = ()) -> dict[str, Any]:
    """The savings figures of the window ``[since, until)`` from an opened record store and the
    shadow log (what ``tiergate report`` and ``GET /admin/savings`` return)."""
    tally = tally_for(settings, route, bucket_s, items)
    # every route's records: a model's serving-time rate and its graded answers come from all
    # of its calls in the window, whichever route made them
    query = RecordQuery(since=since, until=until, limit=None, newest_first=False)
    async for row in sink.query(query):
        tally.record(row.stored.body)
    shadow_error = None
    try:
        for pair in ShadowLog(settings.shadow.dir).read(since):
            if pair.at < until and pair.relation == "tier":
                tally.shadow_pair(pair.route, pair.live.model, pair.shadow.model,
                                  pair.comparison.agree)
    except OSError as exc:
        shadow_error = f"the shadow log is not readable: {exc}"
    canary_error = None
    models = {m for tiers in tally.routes.values() for m in (tiers.small, tiers.large)
              if route is None or tiers is tally.routes.get(route)}
    if settings.canary.dir.is_dir():
        store = FileCanaryStore(settings.canary.dir)
        try:
            for model in sorted(models):
                for run in await store.runs(model):
                    if (since is None or run.started_at >= since) and run.started_at < until:
                        tally.canary_run(run)
        except (ConfigError, OSError) as exc:
            canary_error = f"the canary store is not readable: {exc}"
    return {**tally.result(), "window": {"since": since, "until": until},
            "shadow_error": shadow_error, "canary_error": canary_error}
