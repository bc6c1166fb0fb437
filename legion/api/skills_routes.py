"""Control-socket routes for skills (`legion skills add|ls|rm|show|promote`)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from legion.api.http import Call, Router
from legion.errors import NotFound
from legion.fleet import skills as store
from legion.fsutil import UnsafeEntry
from legion.wire import skills as rules
from legion.wire.fields import AgentName
from legion.wire.skills import (
    SkillInfo,
    SkillList,
    SkillProblem,
    SkillPromote,
    SkillText,
    SkillUpload,
)

if TYPE_CHECKING:
    from legion.host import Host

# One skill write at a time (a flood of uploads holds one worker thread, not the pool).
_lock = asyncio.Lock()


def build_skill_routes(router: Router, host: Host) -> None:
    def known(agent: str | None) -> None:
        if agent is not None and agent not in host.config.agents:
            raise NotFound(
                f"no agent named {agent!r}; `legion agents ls` lists them",
                code="unknown_agent",
                agent=agent,
            )

    def refused(action: str, target: str, exc: Exception) -> None:
        host.audit.append("operator", action, target, "deny", reason=str(exc)[:500])

    @router.route("GET", "/v1/skills", response=SkillList, query={"agent": AgentName})
    async def skills_list(call: Call) -> SkillList:
        """The fleet's skills and each agent's (installed for it, and its own), or one
        agent's with `?agent=`; an agent-written skill that breaks a rule shows why."""
        agent = call.request.query.get("agent") or None
        known(agent)
        agents = [agent] if agent else sorted(host.config.agents)
        found = await asyncio.to_thread(store.list_skills, host.paths, agents)
        return SkillList(skills=found)

    @router.route("POST", "/v1/skills", body=SkillUpload, response=SkillInfo)
    async def skills_add(call: Call) -> SkillInfo:
        """Install a skill folder for the fleet, or for one agent (`agent`)."""
        body: SkillUpload = call.body
        known(body.agent)
        target = f"{body.agent or store.FLEET}/{body.name}"
        try:
            skill = rules.check_skill(store.decode_upload(body.files), body.name)
            async with _lock:
                await asyncio.to_thread(
                    store.install, host.paths, skill, body.agent, replace=body.replace
                )
        except SkillProblem as exc:
            refused("skill.install", target, exc)
            raise store.BadSkill(str(exc)) from None
        except Exception as exc:
            refused("skill.install", target, exc)
            raise
        host.audit.append(
            "operator", "skill.install", target, "allow", files=len(skill.files), bytes=skill.size
        )
        source = "agent" if body.agent else store.FLEET
        return SkillInfo(
            name=skill.meta.name,
            description=skill.meta.description,
            source=source,
            agent=body.agent,
            files=len(skill.files),
            bytes=skill.size,
        )

    @router.route("DELETE", "/v1/skills/{name}", response=SkillList, query={"agent": AgentName})
    async def skills_remove(call: Call) -> SkillList:
        """Remove an installed skill (the fleet's, or `?agent=`'s)."""
        name, agent = call.params["name"], call.request.query.get("agent") or None
        known(agent)
        async with _lock:
            await asyncio.to_thread(store.uninstall, host.paths, name, agent)
        host.audit.append("operator", "skill.remove", f"{agent or store.FLEET}/{name}", "allow")
        found = await asyncio.to_thread(store.list_skills, host.paths, [agent] if agent else [])
        return SkillList(skills=found)

    @router.route(
        "GET",
        "/v1/skills/{name}",
        response=SkillText,
        query={"agent": AgentName, "source": str},
    )
    async def skills_show(call: Call) -> SkillText:
        """One skill's SKILL.md and file list, for review (`source`: fleet, agent or own)."""
        name = call.params["name"]
        agent = call.request.query.get("agent") or None
        source = call.request.query.get("source") or ("own" if agent else store.FLEET)
        if source not in ("fleet", "agent", "own") or (source != "fleet" and agent is None):
            raise store.BadSkill("source is fleet, or agent or own with ?agent=NAME")
        known(agent)
        try:
            skill = await asyncio.to_thread(store.read_skill, host.paths, name, source, agent)
        except UnsafeEntry as exc:
            host.audit.append("host", "skill.refused", f"{agent}/{name}", "deny", reason=str(exc))
            raise
        return SkillText(
            name=skill.meta.name,
            source=source,
            agent=agent,
            skill_md=skill.files[rules.SKILL_FILE].decode("utf-8"),
            files=sorted(skill.files),
        )

    @router.route("POST", "/v1/skills/{name}/promote", body=SkillPromote, response=SkillInfo)
    async def skills_promote(call: Call) -> SkillInfo:
        """Install an agent-written skill (after review) for the fleet, or for `to`."""
        name, body = call.params["name"], call.body
        assert isinstance(body, SkillPromote)
        known(body.agent)
        known(body.to)
        target = f"{body.to or store.FLEET}/{name}"
        try:
            skill = await asyncio.to_thread(store.read_skill, host.paths, name, "own", body.agent)
            async with _lock:
                await asyncio.to_thread(
                    store.install, host.paths, skill, body.to, replace=body.replace
                )
        except Exception as exc:
            refused("skill.promote", target, exc)
            raise
        host.audit.append(
            "operator", "skill.promote", target, "allow", by=body.agent, files=len(skill.files)
        )
        return SkillInfo(
            name=skill.meta.name,
            description=skill.meta.description,
            source="agent" if body.to else store.FLEET,
            agent=body.to,
            files=len(skill.files),
            bytes=skill.size,
        )
