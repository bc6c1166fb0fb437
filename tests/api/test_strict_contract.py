"""issue 15: the request models are strict and bounded, and each socket's OpenAPI document
states every rule the server enforces (the schemathesis run in test_contract.py checks the
same from the outside; these pin each seen failure down on a real host)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from legion.config import parse_config
from legion.host import Host
from legion.paths import Paths
from legion.wire import rules
from tests.conftest import agent_client, control_client

pytestmark = pytest.mark.anyio

CONFIG = """
[host.blackboard]
max_key_length = 40

[agents.alice.permissions]
blackboard_read = ["**"]
blackboard_write = ["**"]
can_message = ["*"]
can_subscribe = ["**"]
can_publish = ["**"]

[agents.bob]
"""

# JSON Schema 2020-12 and OpenAPI 3.1 keywords a generated document may use; anything else
# (pydantic once wrote `ge`/`le` for a validated int) is a rule the schema fails to state.
SCHEMA_KEYWORDS = {
    "$ref", "type", "properties", "required", "additionalProperties", "items", "anyOf",
    "oneOf", "allOf", "not", "enum", "const", "default", "title", "description",
    "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "minLength",
    "maxLength", "pattern", "minItems", "maxItems", "propertyNames", "patternProperties",
    "examples", "contentEncoding", "format", "minProperties", "maxProperties",
}  # fmt: skip


def schema_nodes(node: Any) -> list[dict[str, Any]]:
    """Every schema object under `node` (itself included)."""
    out: list[dict[str, Any]] = []
    if isinstance(node, dict):
        out.append(node)
        for key, value in node.items():
            if key in ("properties", "patternProperties", "$defs"):
                for child in value.values():
                    out += schema_nodes(child)
            elif key in ("default", "examples", "enum", "const", "required"):
                continue
            else:
                out += schema_nodes(value)
    elif isinstance(node, list):
        for value in node:
            out += schema_nodes(value)
    return out


async def test_bodies_are_strict_and_bounded(home: Path) -> None:
    """issue 15 items 1-2: ids beyond SQLite's INTEGER are a 422, not a 500; `true` is not
    item 1, `false` is not 0 seconds, "5" is not 5; a float without fraction is an integer
    (as JSON Schema says), a TTL of 1e400 is not "never expires"."""
    paths = Paths.resolve(home)
    async with (
        Host.running(parse_config(CONFIG), paths) as host,
        agent_client(paths, "alice") as alice,
    ):
        queued = host.send("operator", "alice", {"n": 1})
        refused = [
            ("/v1/inbox/ack", {"ids": [2**63]}),
            ("/v1/inbox/ack", {"ids": [-(2**63) - 1]}),
            ("/v1/inbox/ack", {"ids": [0]}),
            ("/v1/inbox/ack", {"ids": []}),
            ("/v1/inbox/ack", {"ids": [True]}),
            ("/v1/inbox/ack", {"ids": [str(queued)]}),
            ("/v1/inbox/ack", {"ids": [1.5]}),
            ("/v1/inbox/poll", {"ack": [2**64]}),
            ("/v1/inbox/poll", {"wait_s": False}),
            ("/v1/inbox/poll", {"max_items": "5"}),
            ("/v1/replies", {"in_reply_to": 2**63}),
            ("/v1/replies", {"in_reply_to": False}),
            ("/v1/blackboard/cas", {"key": "k", "expected_version": 2**63, "value": 1}),
            ("/v1/blackboard/cas", {"key": "k", "expected_version": True, "value": 1}),
            ("/v1/blackboard/claim", {"key": "k", "ttl_s": "60"}),
            ("/v1/blackboard/watch", {"pattern": "**", "cursor": 2**63}),
        ]
        for path, body in refused:
            response = await alice.post(path, json=body)
            assert response.status_code == 422, (path, body, response.text)
            assert response.json()["error"]["code"] == "invalid_body"
        for raw in (b'{"value": 1, "ttl_s": 1e400}', b'{"value": 1, "ttl_s": NaN}'):
            put = await alice.put("/v1/blackboard/entries/k", content=raw)
            assert put.status_code == 422, put.text
        assert host.blackboard.get("k") is None  # nothing half-applied
        assert host.inboxes.depth("alice") == 1  # nothing acked by `true` or "1"

        acked = await alice.post("/v1/inbox/ack", json={"ids": [float(queued)]})
        assert acked.status_code == 200 and acked.json() == {"acked": 1}


async def test_schema_states_what_the_server_enforces(home: Path) -> None:
    """issue 15 item 3: key and topic patterns, the configured key length, path parameter
    types, minItems, URL schemes and the action enum are in the documents, with links."""
    paths = Paths.resolve(home)
    async with (
        Host.running(parse_config(CONFIG), paths),
        agent_client(paths, "alice") as alice,
        control_client(paths) as operator,
    ):
        agent_doc = (await alice.get("/v1/openapi.json")).json()
        control_doc = (await operator.get("/v1/openapi.json")).json()
    schemas = agent_doc["components"]["schemas"]

    key = schemas["BlackboardCas"]["properties"]["key"]
    assert key["pattern"] == rules.KEY_PATTERN and key["maxLength"] == 40  # configured
    entry = agent_doc["paths"]["/v1/blackboard/entries/{key}"]
    [param] = entry["put"]["parameters"]
    assert param["schema"]["pattern"] == rules.KEY_PATTERN and param["schema"]["maxLength"] == 40
    assert schemas["PublishRequest"]["properties"]["topic"]["pattern"] == rules.KEY_PATTERN
    assert schemas["SubscribeRequest"]["properties"]["topic"]["pattern"] == rules.GLOB_PATTERN
    assert schemas["WatchRequest"]["properties"]["pattern"]["pattern"] == rules.GLOB_PATTERN
    assert schemas["AckRequest"]["properties"]["ids"]["minItems"] == 1
    ids = schemas["AckRequest"]["properties"]["ids"]["items"]
    assert (ids["minimum"], ids["maximum"]) == (1, 2**63 - 1)
    assert schemas["EgressRequest"]["properties"]["url"]["pattern"] == rules.URL_PATTERN
    to = schemas["MessageRequest"]["properties"]["to"]
    assert to["pattern"] == rules.NAME_PATTERN and to["examples"] == ["bob"]
    ttl = schemas["BlackboardPut"]["properties"]["ttl_s"]["anyOf"][0]
    assert ttl["exclusiveMinimum"] == 0 and ttl["maximum"] > 0

    action = control_doc["paths"]["/v1/agents/{name}/{action}"]["post"]["parameters"]
    assert action[1]["schema"]["enum"] == ["start", "stop", "restart"]
    assert action[0]["schema"]["pattern"] == rules.NAME_PATTERN
    assert action[0]["schema"]["examples"] == ["alice", "bob"]

    poll_links = agent_doc["paths"]["/v1/inbox/poll"]["post"]["responses"]["200"]["links"]
    assert poll_links["AckPolled"]["requestBody"] == {"ids": ["$response.body#/items/0/id"]}
    put_links = entry["put"]["responses"]["200"]["links"]
    swap = put_links["SwapWritten"]["requestBody"]
    assert swap["expected_version"] == "$response.body#/version"
    # The shared message route links to an ack only where there is an inbox to ack.
    control_message = control_doc["paths"]["/v1/messages"]["post"]["responses"]["200"]
    assert "links" not in control_message

    for doc in (agent_doc, control_doc):
        roots = list(doc["components"]["schemas"].values())
        for operations in doc["paths"].values():
            for op in operations.values():
                roots += [p["schema"] for p in op.get("parameters", [])]
        for node in (n for root in roots for n in schema_nodes(root)):
            unknown = set(node) - SCHEMA_KEYWORDS
            assert not unknown, (unknown, node)
        assert "x-legion-configured" not in str(doc)
