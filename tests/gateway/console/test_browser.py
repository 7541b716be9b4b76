"""The console in a real browser: Playwright driving Debian's Chromium against two real
replicas of the reference pair's route ``auto`` on one Redis (conftest.py). Sign in (a wrong
key refused, the right one kept in the tab only), reach every page by keyboard, move the
threshold slider and apply it (the other replica changes too, the audit trail says who), read
every tuple of the registry, acknowledge a canary alarm, open a record in full and replay it
to identical; every page fits a laptop's and a wide monitor's width."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest
from playwright.sync_api import expect

from tests.gateway.console.conftest import (
    ADMIN,
    ADMIN_KEY,
    ConsoleFleet,
    screenshot,
    sign_in,
    until,
)

pytestmark = pytest.mark.slow

ESCALATED_PROMPT = "rev(123+489)="  # ref-small-int8 gets it wrong, the verifier escalates
KEPT_PROMPTS = ("rev(93+43)=", "rev(12+34)=", "sort(dcba)=", "rev(51+27)=")


def complete(fleet: ConsoleFleet, replica: str, prompt: str) -> httpx.Response:
    answer = httpx.post(fleet.replicas[replica].url + "/v1/completions", timeout=120, json={
        "model": "auto", "prompt": prompt, "max_tokens": 6, "temperature": 0, "logprobs": 3})
    assert answer.status_code == 200, answer.text
    return answer


def recorded(fleet: ConsoleFleet, prompt: str) -> str:
    """The id of the record of a request to ``auto`` on g1, once it is stored."""
    record_id: str = complete(fleet, "g1", prompt).headers["x-tiergate-record-id"]
    until(lambda: httpx.get(fleet.replicas["g1"].url + f"/admin/records/{record_id}",
                            headers=ADMIN).status_code == 200, "the record stored")
    return record_id


def focused(page: Any) -> str:
    text: str = page.evaluate("document.activeElement.textContent")
    return text


def test_sign_in_keeps_the_key_in_the_tab_only_and_every_page_is_keyboard_reachable(
        console_fleet: ConsoleFleet, page: Any) -> None:
    page.goto(console_fleet.replicas["g1"].url + "/console")
    screenshot(page, "login")
    page.get_by_label("Admin key").fill("tg-not-the-key")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_contain_text("Not accepted")
    assert page.evaluate("sessionStorage.length") == 0

    page.get_by_label("Admin key").fill(ADMIN_KEY)
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="Routes", exact=True)).to_be_visible()
    expect(page.locator("main")).to_have_attribute("data-loaded", "#/routes/auto")  # settled
    assert page.evaluate("Object.values(sessionStorage)") == [ADMIN_KEY]
    assert page.evaluate("localStorage.length") == 0
    assert page.context.cookies() == []
    assert ADMIN_KEY not in page.url

    # the keyboard alone: the skip link first, then the pages in order, a visible focus ring
    page.locator("body").focus()
    page.keyboard.press("Tab")
    assert focused(page) == "Skip to content"
    for name in ("Routes", "Models", "Canaries", "Records"):
        page.keyboard.press("Tab")
        assert focused(page) == name
        assert page.evaluate("getComputedStyle(document.activeElement).outlineStyle") == "solid"
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="Records", exact=True)).to_be_visible()

    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_label("Admin key")).to_be_visible()
    assert page.evaluate("sessionStorage.length") == 0


def test_the_slider_previews_a_threshold_and_apply_changes_every_replica(
        console_fleet: ConsoleFleet, page: Any, browser: Any) -> None:
    for prompt in (ESCALATED_PROMPT, *KEPT_PROMPTS):
        complete(console_fleet, "g1", prompt)
    before = console_fleet.admin("g1", "GET", "/admin/routes/auto/threshold")["threshold"]
    try:
        apply_in_the_browser(console_fleet, page, browser, before)
    finally:
        console_fleet.admin("g1", "PUT", "/admin/routes/auto/threshold",
                            json={"threshold": before, "reason": "console test: restored"})


def apply_in_the_browser(console_fleet: ConsoleFleet, page: Any, browser: Any,
                         before: float) -> None:
    sign_in(page, console_fleet.replicas["g1"].url)
    page.goto(console_fleet.replicas["g1"].url + "/console#/routes/auto")
    expect(page.locator("#current-threshold")).to_have_text(f"{before:.4f}")
    expect(page.get_by_role("img", name="Evaluation data")).to_be_visible()
    screenshot(page, "routes", full_page=True)

    apply = page.get_by_role("button", name="Apply…")
    expect(apply).to_be_disabled()  # nothing to apply yet
    preview = page.locator("circle.preview-dot").first
    slider = page.get_by_role("slider", name="Threshold")
    slider.focus()
    for _ in range(50):
        page.keyboard.press("ArrowRight")
    chosen = float(slider.input_value())
    assert chosen > before
    expect(preview).to_have_attribute("visibility", "visible")
    row = page.get_by_role("row", name="evaluation")
    now, previewed = (row.get_by_role("cell").nth(i).inner_text() for i in (0, 1))
    assert now != previewed  # another operating point: fewer escalations
    expect(apply).to_be_enabled()

    apply.click()
    dialog = page.get_by_role("dialog")
    expect(dialog).to_contain_text(f"to {chosen:.4f}")
    expect(dialog).to_contain_text("every replica")
    dialog.get_by_label("Reason").fill("console test: fewer escalations")
    dialog.get_by_role("button", name="Apply threshold").click()
    expect(page.locator("#route-status")).to_contain_text(f"now {chosen:.4f}")
    expect(page.locator("#current-threshold")).to_have_text(f"{chosen:.4f}")
    trail = page.get_by_role("region", name="Audit trail")
    expect(trail).to_contain_text("console test: fewer escalations")
    expect(trail).to_contain_text("sre")
    screenshot(page, "routes-applied", full_page=True)

    # the other replica took it (shared through Redis), and its console shows it
    def other() -> bool:
        shown = console_fleet.admin("g2", "GET", "/admin/routes/auto/threshold")["threshold"]
        return bool(shown == pytest.approx(chosen))

    until(other, "the threshold on the other replica")
    second = browser.new_context(viewport={"width": 1280, "height": 800}).new_page()
    try:
        sign_in(second, console_fleet.replicas["g2"].url)
        second.goto(console_fleet.replicas["g2"].url + "/console#/routes/auto")
        expect(second.locator("#current-threshold")).to_have_text(f"{chosen:.4f}")
    finally:
        second.context.close()


def test_the_models_page_shows_every_tuple_with_its_eval_and_pins(
        console_fleet: ConsoleFleet, page: Any) -> None:
    sign_in(page, console_fleet.replicas["g1"].url)
    page.goto(console_fleet.replicas["g1"].url + "/console#/models")
    registry = console_fleet.admin("g1", "GET", "/admin/registry")
    for entry in registry["models"]:
        card = page.get_by_role("region", name=re.compile(rf"^{re.escape(entry['name'])} "))
        expect(card).to_contain_text(entry["digest"].removeprefix("sha256:")[:12])
    small = page.get_by_role("region", name=re.compile(r"^ref-small-int8 "))
    expect(small).to_contain_text("int8-dynamic (8 bit)")
    expect(small).to_contain_text("d4ebc9ca047d")  # weights digest, as pinned in the config
    expect(small).to_contain_text("tiergate maintainers")
    slices = small.get_by_role("table", name="Per-slice scores against the baseline")
    expect(slices).to_contain_text("add/1")
    entry = next(m for m in registry["models"] if m["name"] == "ref-small-int8")
    for row in entry["slices"]:  # score, full-precision baseline and tolerance, as gated
        cells = slices.get_by_role("row").filter(
            has=page.get_by_role("cell", name=row["slice"], exact=True))
        expect(cells).to_contain_text(f"{row['accuracy'] * 100:.1f} %")
        expect(cells).to_contain_text(f"{row['baseline'] * 100:.1f} %")
        expect(cells).to_contain_text("within" if row["within"] else "below")
    screenshot(page, "models", full_page=True)


def test_an_alarm_is_acknowledged_in_the_browser(console_fleet: ConsoleFleet,
                                                 page: Any) -> None:
    console_fleet.admin("g1", "POST", "/admin/canary/live/pin")
    console_fleet.admin("g1", "POST", "/admin/canary/live/run")
    for i in range(4):  # client traffic, mirrored to the pinned version: shadow agreement
        answer = httpx.post(console_fleet.replicas["g1"].url + "/v1/completions", timeout=60,
                            json={"model": "live", "prompt": f"client {i}", "max_tokens": 32,
                                  "temperature": 0})
        assert answer.status_code == 200, answer.text

    def shadowed() -> bool:
        state = console_fleet.admin("g1", "GET", "/admin/canary/live")["state"]
        return bool(state["drift"]["streams"]["shadow"]["observations"] >= 4)

    until(shadowed, "the mirrored pairs as drift evidence")
    console_fleet.live.swapped.set()  # a silent swap: same name, other answers
    try:
        until(lambda: console_fleet.admin("g1", "POST", "/admin/canary/live/run")["status"]
              == "drift", "a drift alarm")
    finally:
        console_fleet.live.swapped.clear()
    until(lambda: console_fleet.admin("g2", "GET", "/admin/canary/live")["status"] == "drift",
          "the alarm on the other replica (it re-reads the canary store)")
    sign_in(page, console_fleet.replicas["g2"].url)  # any replica: one canary store
    page.goto(console_fleet.replicas["g2"].url + "/console#/canaries/live")
    card = page.get_by_role("region", name="live drift")
    expect(card).to_contain_text("open alarm")
    expect(card).to_contain_text("shadow agreement: 100.0 % of 4 mirrored requests")
    expect(page.get_by_role("img", name="live: pass rate per slice")).to_be_visible()
    screenshot(page, "canaries", full_page=True)

    page.get_by_role("button", name="Acknowledge the alarm on live").click()
    expect(page.get_by_role("button", name="Acknowledge the alarm on live")).to_have_count(0)
    expect(page.get_by_role("region", name="live", exact=False).first).to_contain_text(
        "acknowledged")

    def acknowledged() -> bool:  # on the other replica too: one store
        state = console_fleet.admin("g1", "GET", "/admin/canary/live")["state"]
        return state["alarm"] is None and state["past_alarms"][-1]["acknowledged_by"] == "console"

    until(acknowledged, "the acknowledgement on the other replica")


def test_a_record_opens_in_full_and_replays_to_identical(console_fleet: ConsoleFleet,
                                                         page: Any) -> None:
    record_id = recorded(console_fleet, ESCALATED_PROMPT)
    url = console_fleet.replicas["g1"].url
    sign_in(page, url)
    page.goto(url + "/console#/records?since=yesterday")
    expect(page.get_by_role("alert")).to_contain_text("not a time")  # beside the form
    search = page.get_by_role("form", name="Search records")
    search.get_by_label("Since").fill("1h")
    search.get_by_label("Route").fill("auto")
    search.get_by_label("Escalated").select_option("true")
    search.get_by_role("button", name="Search").click()
    expect(page.locator("main")).to_have_attribute(
        "data-loaded", re.compile(r"since=1h&route=auto.*escalated=true"))
    link = page.get_by_role("link", name=record_id)
    expect(link).to_be_visible()
    screenshot(page, "records", full_page=True)

    link.click()
    expect(page.get_by_role("heading", name=f"Record {record_id}")).to_be_visible()
    decision = page.get_by_role("region", name="Decision")
    expect(decision).to_contain_text("escalated")
    expect(decision).to_contain_text("> threshold")
    small = page.get_by_role("region", name="Call 0: ref-small-int8")
    expect(small).to_contain_text("rejected small answer")
    record = console_fleet.admin("g1", "GET", f"/admin/records/{record_id}")
    for call in record["calls"]:
        tokens = call["choices"][0]["logprobs"]["token"]
        heat = page.get_by_role("group", name=f"Tokens of call {call['index']} choice 0")
        expect(heat.locator(".tok")).to_have_count(len(tokens))
    large = page.get_by_role("region", name="Call 1: ref-large")
    large.get_by_text("Tokens as a table").focus()
    page.keyboard.press("Enter")  # the heat map's figures, for the keyboard and screen readers
    first = record["calls"][1]["choices"][0]["logprobs"]
    rows = large.locator("details table tbody tr")
    expect(rows).to_have_count(len(first["token"]))
    expect(rows.first).to_contain_text(f"{first['logprob'][0]:.4f}")
    expect(page.get_by_role("region", name="Chain and replay")).to_contain_text("verified")

    page.get_by_role("button", name="Replay").click()
    result = page.locator("#replay-result")
    expect(result).to_contain_text("identical", timeout=120_000)
    expect(result).not_to_contain_text("diverged")
    screenshot(page, "record", full_page=True)


@pytest.mark.parametrize("size", [(1280, 800), (2560, 1440)])
def test_every_page_fits_the_screen_width(console_fleet: ConsoleFleet, browser: Any,
                                          size: tuple[int, int]) -> None:
    width, height = size
    context = browser.new_context(viewport={"width": width, "height": height})
    page = context.new_page()
    try:
        url = console_fleet.replicas["g1"].url
        sign_in(page, url)
        record_id = recorded(console_fleet, KEPT_PROMPTS[0])
        for where in ("routes/auto", "models", "canaries", "records",
                      f"records/{record_id}"):
            page.goto(f"{url}/console#/{where}")
            expect(page.locator("main")).to_have_attribute("data-loaded", f"#/{where}")
            expect(page.locator("main > .error")).to_have_count(0)  # the page loaded whole
            overflow = page.evaluate("document.documentElement.scrollWidth - innerWidth")
            assert overflow <= 0, f"{where} at {width}x{height} scrolls sideways"
        if width > 2000:
            page.goto(f"{url}/console#/routes/auto")
            expect(page.locator("main")).to_have_attribute("data-loaded", "#/routes/auto")
            screenshot(page, "routes-wide")
    finally:
        context.close()
