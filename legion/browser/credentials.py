"""`$CRED{name}` typed by an agent's browser: substituted for the origin of the field's frame,
only toward a host the credential is bound to (the rule of `/egress/http`), or refused and
audited with nothing typed. The browser checks the origin again right before it fills the
field, and masks the field from then on (docs/browser.md, "Credentials")."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from legion.errors import Forbidden
from legion.gateway.egress import CRED_RE
from legion.mesh.globs import glob_match

if TYPE_CHECKING:
    from legion.browser.manager import Browsers, Slot


async def with_credentials(browsers: Browsers, slot: Slot, args: dict[str, Any]) -> dict[str, Any]:
    """Substitute `$CRED{name}` for the field's frame origin, or refuse (audited)."""
    origin = str((await browsers.call(slot, "origin", {"ref": args["ref"]})).get("origin", ""))
    host = (urlsplit(origin).hostname or "") if origin.startswith(("http:", "https:")) else ""
    agent_cfg = browsers.host.config.agents[slot.agent]
    patterns = agent_cfg.permissions.allowed_credentials
    names = sorted(set(CRED_RE.findall(args["text"])))
    values: dict[str, str] = {}
    for name in names:
        allowed = [name] if any(glob_match(p, name) for p in patterns) else []
        try:
            if not host:
                raise Forbidden(
                    f"the field is on a page of origin {origin or 'unknown'!r}, not an "
                    "http(s) host; a credential is typed only on a host it is bound to",
                    code="credential_denied",
                    credential=name,
                )
            values[name] = browsers.host.vault.resolve_for_agent(name, allowed=allowed, host=host)
        except Forbidden as exc:
            browsers.host.audit.append(
                slot.agent,
                "browser.credential",
                name,
                "deny",
                origin=origin,
                reason=exc.message,
            )
            raise
    browsers.host.audit.append(
        slot.agent, "browser.credential", ",".join(names), "allow", origin=origin
    )
    text = CRED_RE.sub(lambda m: values[m.group(1)], args["text"])
    return {**args, "text": text, "secret": True, "origin": origin}
