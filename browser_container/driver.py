"""Playwright driving the browser: one persistent context (the profile), tabs, and the
actions the host asks for. Refs are Playwright's own: `page.aria_snapshot(mode="ai")`
prints `[ref=e5]` marks, and the `aria-ref=e5` selector acts on the element (refs inside
an iframe look like `f1e3`).

What a page holds that the agent must not read is masked before anything leaves: the
value of every password field, and of every field a credential was typed into, in
snapshots (`textbox "Pass" [ref=e7]: [masked]`) and screenshots (painted over).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import re
from dataclasses import dataclass, field
from typing import Any

from playwright.async_api import (
    Browser,
    BrowserContext,
    Dialog,
    Error,
    Locator,
    Page,
    Playwright,
    async_playwright,
)
from playwright.async_api import TimeoutError as PlaywrightTimeout

MASK = "[masked]"
SCREENSHOT_MAX_BYTES = 8 * 1024 * 1024
_REF_LINE = re.compile(r"\[ref=([a-z0-9]+)\]")
_VALUE_ROLES = ("textbox", "searchbox", "combobox", "spinbutton")
# Actions that act within a page: its title is re-read only when the URL changed.
IN_PAGE = frozenset({"click", "type", "select", "scroll"})
PLAYWRIGHT_DISABLED = [
    "AvoidUnnecessaryBeforeUnloadCheckSync",
    "DestroyProfileOnBrowserClose",
    "HttpsUpgrades",
    "HttpsFirstBalancedModeAutoEnable",
    "LensOverlay",
    "MediaRouter",
    "PaintHolding",
    "ThirdPartyStoragePartitioning",
    "AvoidCorsURLLoaderRestartOnRedirect",
    "OptimizationHints",
    "NetworkTimeServiceQuerying",
    "AimEnabled",
    "PreconnectToSearch",
]
PLAYWRIGHT_ENABLED = ["CDPScreenshotNewSurface", "SkipListAccountsWithoutGaiaCookies"]
# Nothing saved that a typed credential could end up in; no spare renderer kept warm.
DISABLED = [
    "PasswordManagerOnboarding",
    "AutofillServerCommunication",
    "Translate",
    "SpareRendererForSitePerProcess",
    "DnsOverHttps",
    "InterestFeedContentSuggestions",
]
ENABLED = ["NetworkServiceInProcess2"]
_IS_SECRET_FIELD = "e => e instanceof HTMLInputElement && e.type === 'password'"


class Fault(Exception):
    """A failure the host relays to the agent: a stable code and what to do next."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class Settings:
    engine: str
    executable: str
    profile: str
    proxy: str
    width: int
    height: int
    timeout_s: float
    snapshot_max: int
    extract_max: int


@dataclass
class Driver:
    settings: Settings
    _pw: Playwright | None = None
    _browser: Browser | None = None
    context: BrowserContext | None = None
    current: int = 0
    notes: list[str] = field(default_factory=list)
    # refs (per page) of fields a credential was typed into: masked from then on
    secret_refs: dict[int, set[str]] = field(default_factory=dict)
    _pending: set[asyncio.Task[None]] = field(default_factory=set)
    titles: dict[int, tuple[str, str]] = field(default_factory=dict)  # page -> (url, title)

    # --- life ---------------------------------------------------------------------------

    async def start(self) -> None:
        s = self.settings
        # A browser killed with its profile open leaves Chromium's lock behind (a link to
        # the dead container's hostname); the host runs one browser per profile, so the
        # lock can only be stale here.
        for name in ("SingletonLock", "SingletonSocket", "SingletonCookie"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(s.profile, name))
        # The driver (node) keeps a small heap: it only relays protocol messages.
        os.environ.setdefault("NODE_OPTIONS", "--max-semi-space-size=1")
        self._pw = await async_playwright().start()
        common: dict[str, Any] = {
            "headless": False,
            "executable_path": s.executable,
            "viewport": {"width": s.width, "height": s.height},
            "accept_downloads": False,
            "ignore_https_errors": False,
            "service_workers": "block",
        }
        if s.engine == "camoufox":
            launcher = self._pw.firefox
            common["proxy"] = {"server": s.proxy}
            common["firefox_user_prefs"] = {
                "network.proxy.allow_hijacking_localhost": True,
                "signon.rememberSignons": False,
            }
            args: list[str] = []
        else:
            launcher = self._pw.chromium
            args = [
                f"--proxy-server={s.proxy}",
                # Chromium bypasses a proxy for loopback unless told not to: every request
                # of the page must reach the host's policy, loopback ones included.
                "--proxy-bypass-list=<-loopback>",
                # The last --disable-features / --enable-features wins: Playwright's own
                # lists (1.65) are repeated here with ours.
                "--disable-features=" + ",".join(PLAYWRIGHT_DISABLED + DISABLED),
                "--enable-features=" + ",".join(PLAYWRIGHT_ENABLED + ENABLED),
                "--disable-gpu",
                "--disable-client-side-phishing-detection",
                "--disable-domain-reliability",
                "--no-pings",
                # Memory (an idle browser stays under 200 MiB, see bench/browser.py): the GPU
                # service in the browser process, no zygotes. There is no sandbox between
                # Chromium's processes here anyway (--no-sandbox: the container is the
                # sandbox, see docs/browser.md).
                "--in-process-gpu",
                "--no-zygote",
                "--renderer-process-limit=4",
                "--js-flags=--max-semi-space-size=1",
                f"--window-size={s.width},{s.height}",
                "--window-position=0,0",
            ]
        self.context = await launcher.launch_persistent_context(s.profile, args=args, **common)
        self.context.set_default_timeout(s.timeout_s * 1000)
        self.context.on("page", self._watch)
        for page in self.context.pages:
            self._watch(page)
        if not self.context.pages:
            await self.context.new_page()

    async def close(self) -> None:
        if self.context is not None:
            with contextlib.suppress(Error):
                await self.context.close()
        if self._pw is not None:
            await self._pw.stop()

    def _watch(self, page: Page) -> None:
        def on_dialog(dialog: Dialog) -> None:
            self.notes.append(
                f"the page showed a {dialog.type} dialog, dismissed: {dialog.message[:300]}"
            )
            task = asyncio.ensure_future(_quietly(dialog.dismiss()))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

        page.on("dialog", on_dialog)

    # --- pages ---------------------------------------------------------------------------

    @property
    def pages(self) -> list[Page]:
        assert self.context is not None
        return list(self.context.pages)

    async def page(self) -> Page:
        pages = self.pages
        if not pages:
            assert self.context is not None
            return await self.context.new_page()
        if self.current >= len(pages):
            self.current = len(pages) - 1
        return pages[self.current]

    async def state(self, fresh: bool = True) -> dict[str, Any]:
        """URL, title and notes. Without `fresh`, a page still at the URL its title was
        last read on keeps that title: reading it again right after a click waits for the
        renderer's next frame (about 10 ms), on every click."""
        page = await self.page()
        known = self.titles.get(id(page))
        if not fresh and known is not None and known[0] == page.url:
            title = known[1]
        else:
            try:
                title = (await asyncio.wait_for(page.title(), 2.0))[:500]
            except (TimeoutError, Error):
                title = ""
            self.titles[id(page)] = (page.url, title)
        notes, self.notes = self.notes, []
        return {"url": page.url, "title": title, "note": " ".join(notes)}

    async def _locate(self, ref: str) -> Locator:
        page = await self.page()
        locator = page.locator(f"aria-ref={ref}")
        if not await self._present(locator):
            raise _stale(ref)
        return locator.first

    @staticmethod
    async def _present(locator: Locator) -> bool:
        try:
            return bool(await locator.count())
        except Error:
            return False

    async def _on_ref(self, ref: str, act: Any) -> None:
        """Run `act(locator)` on the element of `ref`, checking in parallel that the ref
        is on the page (a ref never appears later: waiting for it would only time out)."""
        page = await self.page()
        locator = page.locator(f"aria-ref={ref}").first
        action = asyncio.ensure_future(act(locator))
        try:
            if not await self._present(page.locator(f"aria-ref={ref}")):
                action.cancel()
                with contextlib.suppress(asyncio.CancelledError, Error):
                    await action
                raise _stale(ref)
            await action
        finally:
            if not action.done():
                action.cancel()

    async def _settle(self, page: Page) -> None:
        """Give a navigation an action started a moment to land (never fails the action)."""
        with contextlib.suppress(Error, PlaywrightTimeout):
            await page.wait_for_load_state("domcontentloaded", timeout=5000)
        with contextlib.suppress(Error, PlaywrightTimeout):
            await page.wait_for_load_state("load", timeout=3000)

    # --- actions -------------------------------------------------------------------------

    async def run(self, action: str, args: dict[str, Any]) -> dict[str, Any]:
        handler = getattr(self, f"do_{action}", None)
        if handler is None:
            raise Fault("unknown_action", f"the browser has no action {action!r}")
        try:
            extra: dict[str, Any] = await handler(**args)
        except Fault:
            raise
        except PlaywrightTimeout as exc:
            raise Fault("timeout", _first_line(exc) + "; the page may still be loading") from None
        except Error as exc:
            raise Fault("browser_error", _first_line(exc)) from None
        state = await self.state(fresh=action not in IN_PAGE)
        if extra.get("note") and state["note"]:
            extra["note"] = f"{state['note']} {extra['note']}"
        return {**state, **extra}

    async def do_navigate(self, url: str) -> dict[str, Any]:
        if not re.match(r"^https?://", url, re.I):
            raise Fault("invalid_url", "only http:// and https:// URLs can be opened")
        page = await self.page()
        try:
            await page.goto(url, wait_until="domcontentloaded")
        except Error as exc:
            message = _first_line(exc)
            raise Fault("navigation_failed", message) from None
        await self._settle(page)
        return {}

    async def do_snapshot(self) -> dict[str, Any]:
        page = await self.page()
        text = await page.aria_snapshot(mode="ai")
        text = await self._mask_snapshot(page, text)
        limit = self.settings.snapshot_max
        truncated = len(text) > limit
        if truncated:
            text = text[:limit].rsplit("\n", 1)[0]
        return {"snapshot": text, "truncated": truncated}

    async def _mask_snapshot(self, page: Page, text: str) -> str:
        secret = self.secret_refs.get(id(page), set())
        out = []
        checked = 0
        for line in text.split("\n"):
            match = _REF_LINE.search(line)
            stripped = line.lstrip(" -")
            if match and stripped.startswith(_VALUE_ROLES) and "]: " in line:
                ref = match.group(1)
                hide = ref in secret
                if not hide and checked < 500:
                    checked += 1
                    with contextlib.suppress(Error):
                        hide = bool(
                            await page.locator(f"aria-ref={ref}").first.evaluate(
                                _IS_SECRET_FIELD, timeout=2000
                            )
                        )
                if hide:
                    line = line[: line.rindex("]: ") + 3] + MASK
            out.append(line)
        return "\n".join(out)

    async def do_click(self, ref: str) -> dict[str, Any]:
        await self._on_ref(ref, lambda locator: locator.click())
        await self._settle(await self.page())
        return {}

    async def do_origin(self, ref: str) -> dict[str, Any]:
        locator = await self._locate(ref)
        origin = await locator.evaluate("e => e.ownerDocument.location.origin")
        return {"origin": str(origin)}

    async def do_type(
        self, ref: str, text: str, submit: bool = False, secret: bool = False, origin: str = ""
    ) -> dict[str, Any]:
        locator = await self._locate(ref)
        page = await self.page()
        if secret:
            now = await locator.evaluate("e => e.ownerDocument.location.origin")
            if now != origin:
                raise Fault(
                    "origin_changed",
                    f"the field is on {now} now, not {origin}; take a new snapshot",
                )
            self.secret_refs.setdefault(id(page), set()).add(ref)
        await locator.fill(text)
        if submit:
            await locator.press("Enter")
            await self._settle(page)
        return {}

    async def do_select(self, ref: str, value: str) -> dict[str, Any]:
        locator = await self._locate(ref)
        chosen = await locator.select_option(value)
        return {"note": f"selected {', '.join(chosen)}"}

    async def do_scroll(
        self, direction: str = "down", pages: float = 1.0, ref: str | None = None
    ) -> dict[str, Any]:
        if ref is not None:
            await (await self._locate(ref)).scroll_into_view_if_needed()
            return {}
        page = await self.page()
        delta = pages * self.settings.height * (1 if direction == "down" else -1)
        position = await page.evaluate(
            "dy => { window.scrollBy(0, dy); return [window.scrollY, "
            "document.documentElement.scrollHeight]; }",
            delta,
        )
        return {"note": f"scrolled to {int(position[0])} of {int(position[1])} pixels"}

    async def do_back(self) -> dict[str, Any]:
        page = await self.page()
        response = await page.go_back(wait_until="domcontentloaded")
        if response is None and page.url in ("about:blank", ""):
            return {"note": "there is no earlier page in this tab"}
        await self._settle(page)
        return {}

    async def do_screenshot(self, full_page: bool = False) -> dict[str, Any]:
        page = await self.page()
        masks = [frame.locator("input[type=password]") for frame in page.frames]
        masks += [page.locator(f"aria-ref={r}") for r in self.secret_refs.get(id(page), set())]
        data = await page.screenshot(
            type="png", full_page=full_page, mask=masks, animations="disabled", caret="hide"
        )
        if len(data) > SCREENSHOT_MAX_BYTES:
            data = await page.screenshot(type="jpeg", quality=60, full_page=False, mask=masks)
        size = page.viewport_size or {"width": self.settings.width, "height": self.settings.height}
        return {
            "png_base64": base64.b64encode(data).decode("ascii"),
            "width": size["width"],
            "height": size["height"],
        }

    async def do_extract(self, ref: str | None = None) -> dict[str, Any]:
        page = await self.page()
        locator = await self._locate(ref) if ref else page.locator("body")
        text = await locator.inner_text()
        limit = self.settings.extract_max
        return {"text": text[:limit], "truncated": len(text) > limit}

    async def do_tabs(
        self, op: str = "list", index: int | None = None, url: str | None = None
    ) -> dict[str, Any]:
        pages = self.pages
        if op == "new":
            assert self.context is not None
            page = await self.context.new_page()
            self.current = len(self.pages) - 1
            if url:
                await self.do_navigate(url)
        elif op in ("switch", "close"):
            if index is None or not 0 <= index < len(pages):
                raise Fault("no_such_tab", f"there are {len(pages)} tabs (0..{len(pages) - 1})")
            if op == "switch":
                self.current = index
                await pages[index].bring_to_front()
            else:
                self.secret_refs.pop(id(pages[index]), None)
                await pages[index].close()
                if not self.pages:
                    assert self.context is not None
                    await self.context.new_page()
                self.current = min(self.current, len(self.pages) - 1)
        tabs = []
        for i, page in enumerate(self.pages):
            try:
                title = await asyncio.wait_for(page.title(), 2.0)
            except (TimeoutError, Error):
                title = ""
            tabs.append(
                {"index": i, "url": page.url, "title": title[:200], "active": i == self.current}
            )
        return {"tabs": tabs}


def _stale(ref: str) -> Fault:
    return Fault(
        "stale_ref",
        f"ref {ref} is not on the page now (the page changed, or the ref is from an older "
        "snapshot); take a new browser_snapshot and use its refs",
    )


async def _quietly(awaitable: Any) -> None:
    with contextlib.suppress(Error):
        await awaitable


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:500]
