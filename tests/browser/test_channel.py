"""issue 13: the host's end of a browser's control socket against a browser container that
lies or misbehaves (a page that took over the browser could make it): a second connection,
no hello, answers out of order, unreadable or endless lines, silence. Each is refused or
ends in BrowserLost; the host never hangs on it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from legion.browser.channel import BrowserLost, Channel
from legion.wire.browser import Hello, Outcome

pytestmark = pytest.mark.anyio


async def attach(path: Path) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_unix_connection(str(path), limit=32 * 1024 * 1024)
    writer.write(Hello(engine="chromium", version="test", pid=1).model_dump_json().encode() + b"\n")
    await writer.drain()
    return reader, writer


async def hung_up(reader: asyncio.StreamReader) -> bool:
    try:
        return await asyncio.wait_for(reader.read(), 5) == b""
    except ConnectionResetError:
        return True


async def test_one_browser_per_socket_and_a_hello_first(tmp_path: Path) -> None:
    channel = Channel(tmp_path / "control.sock")
    await channel.listen(None)
    try:
        silent_r, silent_w = await asyncio.open_unix_connection(str(channel.path))
        silent_w.write(b"not a hello\n")
        await silent_w.drain()
        assert await hung_up(silent_r)
        silent_w.close()
        reader, writer = await attach(channel.path)
        hello = await channel.wait_attached(5)
        assert hello.engine == "chromium" and channel.attached
        second_r, second_w = await attach(channel.path)
        assert await hung_up(second_r)  # a second browser: refused
        second_w.close()

        async def answer() -> None:
            line = await reader.readline()
            command_id = int(line.split(b'"id":')[1].split(b",")[0])
            outcome = Outcome(id=command_id, ok=True, result={"url": "https://a.example/"})
            writer.write(outcome.model_dump_json().encode() + b"\n")
            await writer.drain()

        task = asyncio.create_task(answer())
        outcome = await channel.call("state", {}, 5)
        await task
        assert outcome.ok and outcome.result == {"url": "https://a.example/"}
        writer.close()
        deadline = asyncio.get_running_loop().time() + 5
        while channel.attached:  # the hang-up is seen without a command in flight
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.01)
        with pytest.raises(BrowserLost):
            await channel.call("state", {}, 5)
    finally:
        await channel.close()


@pytest.mark.parametrize(
    "reply",
    [
        b'{"id": 999, "ok": true}\n',  # another command's answer
        b"{not json\n",
        b'{"id": 1, "ok": true, "result": "' + b"x" * (17 * 1024 * 1024) + b'"}\n',  # too long
        b"",  # silence
    ],
    ids=["out_of_order", "unreadable", "endless", "silent"],
)
async def test_a_lying_browser_ends_in_browser_lost(tmp_path: Path, reply: bytes) -> None:
    channel = Channel(tmp_path / "control.sock")
    await channel.listen(None)
    try:
        reader, writer = await attach(channel.path)
        await channel.wait_attached(5)

        async def misbehave() -> None:
            await reader.readline()
            if reply:
                writer.write(reply)
                await writer.drain()

        task = asyncio.create_task(misbehave())
        with pytest.raises(BrowserLost):
            await channel.call("click", {"ref": "e1"}, 2.0)
        await task
        assert not channel.attached
        writer.close()
    finally:
        await channel.close()
