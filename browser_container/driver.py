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

    # --- life ---------------------------------------------------------------------------

    async def start(self) -> None:
        s = self.settings
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
                "--disable-dev-shm-usage",
                "--disable-gpu",
                "--disable-extensions",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-features=PasswordManagerOnboarding,AutofillServerCommunication,"
                "MediaRouter,OptimizationHints,Translate",
                "--password-store=basic",
                "--no-first-run",
                "--no-default-browser-check",
                "--renderer-process-limit=4",
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

    async def state(self) -> dict[str, Any]:
        page = await self.page()
        try:
            title = await asyncio.wait_for(page.title(), 2.0)
        except (TimeoutError, Error):
            title = ""
        notes, self.notes = self.notes, []
        return {"url": page.url, "title": title[:500], "note": " ".join(notes)}

    async def _locate(self, ref: str) -> Locator:
        page = await self.page()
        locator = page.locator(f"aria-ref={ref}")
        try:
            found = await locator.count()
        except Error:
            found = 0
        if found == 0:
            raise Fault(
                "stale_ref",
                f"ref {ref} is not on the page now (the page changed, or the ref is from an "
                "older snapshot); take a new browser_snapshot and use its refs",
            )
        return locator.first

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
        return {**(await self.state()), **extra}

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
        locator = await self._locate(ref)
        await locator.click()
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


async def _quietly(awaitable: Any) -> None:
    with contextlib.suppress(Error):
        await awaitable


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:500]
