"""issue 8: a failed or refused turn is machine-readable end to end.

The runtime answers a turn that ended without its answer with a reply whose `error` carries
a code (and the host's HTTP status when the host answered the failed call); the host puts it
on the `agent_reply` event (and the asker's inbox, the audit record, a cron run's status).
An answered turn has `error: null`; events from before the field parse the same.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from legion.wire.agent import ReplyRequest, TurnError
from legion.wire.events import AgentReply, parse_event
from tests.agent_container.harness import ask, config_text, running_fleet, until
from tests.fakes.provider import FakeProvider, Reply, ToolCall

pytestmark = pytest.mark.anyio


async def test_an_answered_turn_has_no_error(home: Path) -> None:
    async with FakeProvider() as fake, running_fleet(home, config_text(fake.base_url)) as fleet:
        reply = await ask(fleet.host, "hi")
        assert reply.text == "echo: hi" and reply.error is None


async def test_a_provider_error_is_a_failed_turn_with_its_code(home: Path) -> None:
    async with FakeProvider() as fake, running_fleet(home, config_text(fake.base_url)) as fleet:
        fake.script(Reply(status=400, error="this model does not like you"))
        reply = await ask(fleet.host, "first")
        assert reply.text.startswith("I could not finish this turn:")  # the words stay
        assert reply.error is not None
        assert (reply.error.code, reply.error.status) == ("provider_rejected", 400), reply.error
        assert "does not like you" in reply.error.message
        # a cut stream: an error too, never an answer
        fake.script(Reply(content="a long answer that will be cut", cut_after_chunks=3))
        cut = await ask(fleet.host, "second")
        assert cut.error is not None and cut.error.code
        # the audit record of the reply names the failure
        rows = list(
            fleet.host.store.execute(
                "SELECT detail FROM audit WHERE action = 'reply' AND actor = 'alice'"
            )
        )
        details = [json.loads(r[0]) for r in rows]
        assert any(d.get("error") == "provider_rejected" for d in details), details
        # and once the model is out of its cooldown, the next turn answers, error-free
        assert await until(lambda: fleet.host.health.available("m"), 10)
        assert (await ask(fleet.host, "third")).error is None


async def test_a_budget_refusal_is_a_refused_turn_with_status_402(home: Path) -> None:
    async with FakeProvider() as fake, running_fleet(home, config_text(fake.base_url)) as fleet:
        fleet.host.config.agents["alice"].budget.daily_usd = 0.0
        reply = await ask(fleet.host, "anything")
        assert reply.error is not None
        assert (reply.error.code, reply.error.status) == ("budget_exceeded", 402)
        assert fake.requests == []


async def test_a_task_that_fails_carries_the_error_and_its_result(home: Path) -> None:
    async with (
        FakeProvider() as fake,
        running_fleet(home, config_text(fake.base_url, mode="task")) as fleet,
    ):
        fake.script(Reply(status=500, error="upstream exploded"))
        reply = await ask(fleet.host, "compute")
        assert reply.kind == "task_result"
        assert reply.result is not None and reply.result["status"] == "failed"
        assert reply.error is not None and reply.error.code


async def test_a_loop_stop_is_a_failed_turn(home: Path) -> None:
    async with FakeProvider() as fake, running_fleet(home, config_text(fake.base_url)) as fleet:
        fleet.host.config.agents["alice"].max_tool_rounds = 20
        same = Reply(tool_calls=[ToolCall("list_files", {})])
        fake.script(*[same] * 12, Reply(content="never reached"))
        reply = await ask(fleet.host, "loop", timeout_s=60)
        assert reply.error is not None and reply.error.code == "loop_stopped", reply


async def test_the_asking_agent_gets_the_error_in_its_inbox(home: Path) -> None:
    async with (
        FakeProvider() as fake,
        running_fleet(home, config_text(fake.base_url), ("alice",)) as fleet,
    ):
        from tests.conftest import agent_client

        fake.script(Reply(status=400, error="nope"), model="fake")
        async with agent_client(fleet.paths, "bob") as bob:
            sent = await bob.post("/v1/messages", json={"to": "alice", "payload": "hi"})
            assert sent.status_code == 200, sent.text
            assert await until(lambda: fleet.host.inboxes.depth("bob") == 1, 20)
            polled = await bob.post("/v1/inbox/poll", json={"wait_s": 1})
            payload = polled.json()["items"][0]["payload"]
        assert payload["error"]["code"] == "provider_rejected", payload


async def test_a_cron_run_whose_turn_fails_is_failed(home: Path) -> None:
    async with FakeProvider() as fake, running_fleet(home, config_text(fake.base_url)) as fleet:
        from tests.conftest import control_client

        fake.script(Reply(status=400, error="no"))
        async with control_client(fleet.paths) as operator:
            job = await operator.post(
                "/v1/cron/jobs",
                json={"agent": "alice", "name": "nightly", "schedule": "@daily", "message": "go"},
            )
            assert job.status_code == 200, job.text
            job_id = job.json()["id"]
            ran = await operator.post(f"/v1/cron/jobs/{job_id}/run")
            assert ran.status_code == 200, ran.text

            async def status() -> str:
                runs = await operator.get(f"/v1/cron/jobs/{job_id}/runs")
                return str(runs.json()["runs"][0]["status"])

            for _ in range(400):
                if await status() != "dispatched":
                    break
                await until(lambda: False, 0.05)
            assert await status() == "failed"


def test_events_and_replies_without_the_field_still_parse() -> None:
    """The TUI and older runtimes: `error` is optional on both sides."""
    old = {
        "type": "agent_reply",
        "at": 1.0,
        "agent": "a",
        "in_reply_to": 3,
        "to": None,
        "text": "hi",
        "kind": "chat",
    }
    event = parse_event(json.dumps(old))
    assert isinstance(event, AgentReply) and event.error is None
    assert ReplyRequest.model_validate({"text": "x"}).error is None
    failed = parse_event(json.dumps({**old, "error": {"code": "provider_error", "status": 502}}))
    assert failed.error == TurnError(code="provider_error", message="", status=502)


@pytest.mark.parametrize(
    "bad",
    [
        {"code": ""},
        {"code": "Not A Code"},
        {"code": "x" * 65},
        {"code": "ok", "status": 99},
        {"code": "ok", "extra": 1},
        {"code": "ok", "message": "m" * 4001},
    ],
)
def test_a_runtime_cannot_send_a_malformed_error(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        ReplyRequest.model_validate({"text": "x", "error": bad})
