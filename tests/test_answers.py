"""Shared answers of the busy read endpoints (central/web/answers.py) and the storage's change
marker they rest on: a real SQLite database, a commit through the storage and one by another
connection (as the CLI's), concurrent requests sharing one build."""
from __future__ import annotations

import asyncio
import json
import sqlite3

import pytest

from central.model import PollOutcome
from central.storage import Storage
from central.web.answers import Answers

pytestmark = pytest.mark.unit


@pytest.fixture
async def storage(tmp_path):
    st = await Storage.open(tmp_path / "central.db")
    yield st
    await st.close()


async def test_marker_changes_with_every_commit_of_any_connection(storage, tmp_path):
    first = await storage.change_marker()
    assert await storage.change_marker() == first  # nothing committed: the same
    await storage.add_server("web1", "10.0.0.1")
    after_own = await storage.change_marker()
    assert after_own != first
    con = sqlite3.connect(tmp_path / "central.db")  # another process's connection (the CLI)
    con.execute("UPDATE servers SET tags = '[\"x\"]' WHERE name = 'web1'")
    con.commit()
    con.close()
    assert await storage.change_marker() != after_own
    # and the read connection sees that commit at once
    page, total = await storage.server_page(tag="x")
    assert total == 1 and page[0]["tags"] == ["x"]


async def test_marker_changes_when_the_latest_samples_do(storage):
    server = await storage.add_server("web1", "10.0.0.1")
    await storage.latest_samples()  # the in-memory copy exists from now on
    before = await storage.change_marker()
    await storage.write_polls([PollOutcome(server_id=server.id, ts=100.0, duration=0.1, ok=True,
                                           sample={"cpu": 5.0})], offline_after=3)
    assert await storage.change_marker() != before
    assert (await storage.latest_samples())[server.id]["cpu"] == 5.0


async def test_concurrent_requests_share_one_build_until_the_data_changes(storage):
    answers = Answers(storage.change_marker)
    builds = []
    gate = asyncio.Event()

    async def build():
        builds.append(1)
        await gate.wait()
        page, total = await storage.server_page()
        return {"names": [s["name"] for s in page], "total": total}

    await storage.add_server("web1", "10.0.0.1")
    waiting = [asyncio.create_task(answers.body(("servers",), build)) for _ in range(16)]
    await asyncio.sleep(0)
    gate.set()
    bodies = await asyncio.gather(*waiting)
    assert len(builds) == 1 and len(set(bodies)) == 1
    assert json.loads(bodies[0]) == {"names": ["web1"], "total": 1}
    assert await answers.body(("servers",), build) == bodies[0]  # unchanged: the same bytes, no build
    assert len(builds) == 1
    await storage.add_server("web2", "10.0.0.2")
    assert json.loads(await answers.body(("servers",), build)) == {"names": ["web1", "web2"], "total": 2}
    assert len(builds) == 2
    assert json.loads(await answers.body(("other",), build))["total"] == 2  # another key: its own answer
    assert len(builds) == 3


async def test_an_answer_is_rebuilt_when_older_than_max_age(storage):
    now = [0.0]
    answers = Answers(storage.change_marker, max_age=1.0, clock=lambda: now[0])
    calls = []

    async def build():
        calls.append(now[0])
        return {"n": len(calls)}

    assert json.loads(await answers.body("k", build)) == {"n": 1}
    now[0] = 0.9
    assert json.loads(await answers.body("k", build)) == {"n": 1}
    now[0] = 1.0
    assert json.loads(await answers.body("k", build)) == {"n": 2}


async def test_a_client_going_away_does_not_cancel_the_shared_build(storage):
    answers = Answers(storage.change_marker)
    gate = asyncio.Event()

    async def build():
        await gate.wait()
        return {"ok": True}

    first = asyncio.create_task(answers.body("k", build))
    await asyncio.sleep(0.01)
    second = asyncio.create_task(answers.body("k", build))
    await asyncio.sleep(0.01)
    first.cancel()
    gate.set()
    assert json.loads(await second) == {"ok": True}
    with pytest.raises(asyncio.CancelledError):
        await first


async def test_a_failed_build_is_not_kept(storage):
    answers = Answers(storage.change_marker)
    attempts = []

    async def build():
        attempts.append(1)
        if len(attempts) == 1:
            raise RuntimeError("database gone")
        return {"ok": True}

    with pytest.raises(RuntimeError, match="database gone"):
        await answers.body("k", build)
    assert json.loads(await answers.body("k", build)) == {"ok": True}


async def test_server_rows_give_exactly_what_json_dumps_gives_and_reuse_unchanged_rows(storage):
    from central.web.answers import ServerRows, _dumps

    def answer(rows):
        return {"servers": rows, "total": len(rows), "limit": 100, "offset": 0}

    def row(i, cpu, seen):
        return {"id": i, "name": f"s{i}", "tags": ["a"], "sample": {"ts": 1.0, "cpu": cpu, "top": [[1, "x", 0.5, 10]]},
                "agent_outdated": False, "stale": seen > 30, "seen_ago": seen, "status_text": None}

    enc = ServerRows()
    first = answer([row(1, 5.0, 1.0), row(2, 7.5, 2.0)])
    assert enc.encode(first) == _dumps(first)
    kept = dict(enc._rows)  # noqa: SLF001
    # only the freshness moved: the same row texts are reused, the answer is still exact
    second = answer([row(1, 5.0, 11.0), row(2, 7.5, 12.0)])
    assert enc.encode(second) == _dumps(second)
    assert all(enc._rows[i][1] is kept[i][1] for i in (1, 2))  # noqa: SLF001
    # a figure changed: that row is serialised again
    third = answer([row(1, 6.0, 1.0), row(2, 7.5, 2.0)])
    assert enc.encode(third) == _dumps(third)
    assert enc._rows[1][1] is not kept[1][1] and enc._rows[2][1] is kept[2][1]  # noqa: SLF001
    assert enc.encode(answer([])) == _dumps(answer([]))
    odd = answer([{"id": 3, "name": "s3"}])  # not the row shape it relies on: plain json.dumps
    assert enc.encode(odd) == _dumps(odd)
