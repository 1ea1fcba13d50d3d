"""Driving the served web console in a real browser (Debian's Chromium through Playwright): people
signed in with their operator tokens, each in a browser context of their own, watched for page
errors, and the page helpers the browser tests share (tests/e2e/conftest.py makes the fixtures).

Screenshots go to `$AGENTFLOW_ARTIFACTS/browser/` (default: test-artifacts/browser/, gitignored);
each one's path is printed, so a CI log says where to look.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from playwright.sync_api import Browser, BrowserContext, ConsoleMessage, Error, Locator, Page, expect

from support.served import ROOT, Served

ARTIFACTS = Path(os.environ.get("AGENTFLOW_ARTIFACTS") or ROOT / "test-artifacts") / "browser"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TASK = "CS-101 drop rate is high, investigate"
ENGINEERS = {"alice": "noc-engineer", "bob": "noc-engineer"}
RUN = 60_000  # ms: how long a run may take to reach a point (a few seconds in practice)
UI = 15_000  # ms: how long the page may take to show what it was just told
DESKTOP = {"width": 1280, "height": 1000}
LAPTOP = {"width": 1366, "height": 900}
PHONE = {"width": 390, "height": 844}


MAX_SHOT_HEIGHT = 8000  # px: a screenshot as tall as a long timeline, not as tall as any page
FULL_HEIGHT = """() => {
  // The window height that shows all of the shown view (and a run's conversation) unscrolled;
  // where they are scrolled to is kept, to be put back after the picture.
  const boxes = [...document.querySelectorAll(".view:not([hidden]), .view:not([hidden]) #messages")]
    .filter((e) => e.getClientRects().length);
  window.__beforeShot = boxes.map((e) => [e, e.scrollTop]);
  return Math.ceil(window.innerHeight + Math.max(0, ...boxes.map((e) => e.scrollHeight - e.clientHeight)));
}"""
SCROLL_BACK = "() => { for (const [e, top] of window.__beforeShot || []) e.scrollTop = top; }"


class People:
    """Browser contexts of one test, one per person, watched for page errors."""

    def __init__(self, browser: Browser, test: str) -> None:
        self.browser, self.test = browser, test
        self.contexts: list[BrowserContext] = []
        self.problems: list[str] = []

    def open(self, who: str, viewport: dict[str, int] | None = None) -> Page:
        phone = viewport is not None and viewport["width"] < 600
        context = self.browser.new_context(viewport=viewport or DESKTOP, is_mobile=phone, has_touch=phone)
        context.set_default_timeout(UI)
        self.contexts.append(context)
        page = context.new_page()
        page.on("pageerror", lambda exc: self.problems.append(f"{who}: page exception: {exc}"))
        page.on("console", lambda msg: self._console(who, msg))
        return page

    def _console(self, who: str, msg: ConsoleMessage) -> None:
        # Chromium logs every failed load (the first GET /api/session answers 401, a stopped
        # server refuses connections) as a console error: those are expected, nothing else is.
        if msg.type == "error" and not msg.text.startswith("Failed to load resource"):
            self.problems.append(f"{who}: console error: {msg.text}")

    def sign_in(self, server: Served, who: str, route: str = "", viewport: dict[str, int] | None = None) -> Page:
        """A new context for `who`, signed in on the page with their token, at `route` (e.g. #/inbox)."""
        page = self.open(who, viewport)
        page.goto(f"{server.url}/{route}")
        expect(page.locator("#signin-token")).to_be_visible()
        page.locator("#signin-token").fill(server.tokens[who])
        page.locator("#signin-button").click()
        expect(page.locator("#operator-name")).to_have_text(who)
        expect(page.locator("#signin-view")).to_be_hidden()
        return page

    def shot(self, page: Page, step: str) -> Path:
        """A screenshot of all of the current view: the page itself does not scroll (its views
        do), so the window is made as tall as the view's content for the picture, then put back
        as it was (its size, where the view was scrolled to)."""
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{self.test}-{step}.png"
        size = page.viewport_size
        tall: int = page.evaluate(FULL_HEIGHT)
        grown = size is not None and tall > size["height"]
        if grown and size is not None:
            page.set_viewport_size({"width": size["width"], "height": min(tall, MAX_SHOT_HEIGHT)})
        try:
            page.screenshot(path=str(path), full_page=True)
        finally:
            if grown and size is not None:
                page.set_viewport_size(size)
                page.evaluate(SCROLL_BACK)
        print(f"screenshot: {path}")
        return path

    def assert_clean(self) -> None:
        assert self.problems == [], "\n".join(self.problems)

    def close(self) -> None:
        for context in self.contexts:
            try:
                context.close()
            except Error:
                pass


# -- page helpers -------------------------------------------------------------------------------
def start_in_chat(page: Page, task: str = TASK) -> str:
    """Type the task in the new-request chat and press Enter; the run's id (from its route)."""
    page.locator("#nav-chat").click()
    page.locator("#chat-input").fill(task)
    page.locator("#chat-input").press("Enter")
    expect(page).to_have_url(re.compile(r"#/runs/[^/]+$"))
    expect(page.locator("#messages .chat-user").first).to_contain_text(task)
    return page.url.rsplit("#/runs/", 1)[1]


def pending_card(page: Page, root: str = "#messages") -> tuple[Locator, str]:
    """The run's approval card once it is pending, and its approval id."""
    card = page.locator(f"{root} .card[data-approval-id]")
    expect(card).to_have_count(1, timeout=RUN)
    expect(card).to_have_attribute("data-status", "pending", timeout=RUN)
    approval_id = card.get_attribute("data-approval-id")
    assert approval_id and approval_id.startswith("apr_"), approval_id
    return card, approval_id


def card_by_id(page: Page, approval_id: str, root: str = "#messages") -> Locator:
    return page.locator(f'{root} .card[data-approval-id="{approval_id}"]')


def say(page: Page, text: str) -> None:
    """Type a line in the run's conversation and send it with Enter."""
    page.locator("#chat-input").fill(text)
    page.locator("#chat-input").press("Enter")


def seqs(page: Page) -> list[int]:
    shown: list[str] = page.eval_on_selector_all("#messages .event[data-seq]", "els => els.map(e => e.dataset.seq)")
    return [int(s) for s in shown]


def scroll_width(page: Page) -> int:
    """How wide the page's content is: wider than the viewport means a horizontal scroll."""
    width: int = page.evaluate("document.scrollingElement.scrollWidth")
    return width


OVERFLOWING = """() => {
  // Scroll boxes that scroll sideways, except the ones meant to (a wide KPI table in its box,
  // the composer's textarea): on a phone nothing else may need a horizontal scroll.
  const allowed = ".v-table-wrap, textarea, select";
  const found = [];
  for (const e of document.querySelectorAll("body *")) {
    if (!e.getClientRects().length || e.closest(allowed)) continue;
    const style = getComputedStyle(e);
    if (!["auto", "scroll"].includes(style.overflowX)) continue;
    if (e.scrollWidth > e.clientWidth + 1) found.push(`${e.tagName.toLowerCase()}#${e.id}.${e.className} ${e.scrollWidth}>${e.clientWidth}`);
  }
  return found;
}"""


def sideways(page: Page) -> list[str]:
    """The boxes of the page that scroll sideways (see OVERFLOWING); [] on a page that fits."""
    found: list[str] = page.evaluate(OVERFLOWING)
    return found


def in_viewport(page: Page, selector: str) -> bool:
    """Whether the element is entirely inside the viewport (reachable without scrolling sideways)."""
    box = page.locator(selector).bounding_box()
    size = page.viewport_size
    assert size is not None
    return box is not None and box["x"] >= 0 and box["x"] + box["width"] <= size["width"] and box["y"] >= 0


FETCH = """async ([method, path, body]) => {
  const session = await fetch("/api/session", {credentials: "same-origin"});
  const csrf = session.ok ? (await session.json()).csrf : null;
  const headers = {"Content-Type": "application/json", "Accept": "application/json"};
  if (csrf) headers["X-CSRF-Token"] = csrf;
  const init = {method, headers, credentials: "same-origin"};
  if (body !== null) init.body = JSON.stringify(body);
  const answer = await fetch(path, init);
  let json = null;
  try { json = await answer.json(); } catch { json = null; }
  return {status: answer.status, json};
}"""


def page_fetch(page: Page, method: str, path: str, body: Any = None) -> dict[str, Any]:
    """A request from the page's own context (its cookie; its session's CSRF value)."""
    answer: dict[str, Any] = page.evaluate(FETCH, [method, path, body])
    return answer
