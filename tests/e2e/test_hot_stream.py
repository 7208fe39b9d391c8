"""One hot stream, many writers: the per-stream lanes (infra/lanes.py) on SQLite and PostgreSQL.

Endorsements of one statement from many threads at once are decided one after another and
appended together, so nobody sees a conflict; two lanes on one database (two API processes)
race only at the append and decide again unseen; each command still gets its own answer; and
a fold kept in one process forgets an erased name as soon as another process erased it.
"""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import pytest
from fastapi.testclient import TestClient

from infra.bootstrap import System, bootstrap
from infra.lanes import Lanes
from infra.streamlocks import CONFLICTS
from services.bus import Job, Outcome
from services.decider import Context
from services.people import person_id
from services.ports import Metadata
from services.statements.commands import EndorseStatement
from services.statements.errors import AlreadyEndorsed
from services.statements.model import STATEMENT, active_endorsements
from tests.e2e.conftest import Keys
from tests.e2e.test_statements_api import draft


def finalised(client: TestClient, keys: Keys) -> UUID:
    drafted = draft(client, keys)
    deadline = (datetime.now(UTC) + timedelta(days=7)).isoformat()
    r = client.post(
        f"/v1/statements/{drafted['sid']}/finalise",
        headers=drafted["organiser"],
        json={"endorsement_deadline": deadline},
    )
    assert r.status_code == 200, r.text
    return UUID(drafted["sid"])


def endorsement(sid: UUID, n: int, org: UUID | None = None) -> Job[EndorseStatement]:
    org = org or uuid4()
    name = f"Signatory {n}"
    return Job(
        EndorseStatement(
            statement_id=sid,
            organisation_id=org,
            person_id=person_id(f"{org}/{name}"),
            signatory_name=name,
            organisation_name=f"Organisation {n}",
            organisation_country="ID",
            organisation_kind="ngo",
        ),
        Context(now=datetime.now(UTC), actor="test"),
        Metadata(actor="test"),
    )


def run_all(calls: list[Any]) -> list[Outcome | Exception]:
    """Run every call in its own thread, all released at once; their results in order."""
    results: list[Outcome | Exception] = [RuntimeError("not run")] * len(calls)
    gate = threading.Barrier(len(calls))

    def one(i: int) -> None:
        gate.wait()
        try:
            results[i] = calls[i]()
        except Exception as exc:
            results[i] = exc

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results


def test_writers_queued_behind_an_append_are_decided_and_appended_together(
    client: TestClient, keys: Keys, system: System
) -> None:
    sid = finalised(client, keys)
    writers = 24
    appends: list[int] = []
    real = system.store.append_batch
    first_append_started = threading.Event()

    def slow_first(*args: Any, **kwargs: Any) -> Any:
        commands = args[3]
        appends.append(len(commands))
        if len(appends) == 1:
            first_append_started.set()
            # Hold the first batch until everyone else has queued behind it.
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                queue = system.lanes._queues.get(sid)
                if queue is not None and len(queue) == writers - 1:
                    break
                time.sleep(0.01)
        return real(*args, **kwargs)

    system.store.append_batch = slow_first  # type: ignore[method-assign]
    jobs = [endorsement(sid, n) for n in range(writers)]
    results = run_all([lambda j=j: system.lanes.handle(STATEMENT, sid, j) for j in jobs])
    system.store.append_batch = real  # type: ignore[method-assign]

    assert all(isinstance(r, Outcome) and r.changed for r in results), results
    assert appends == [1, writers - 1], "the second append carried everyone who queued"
    versions = sorted(r.version for r in results if isinstance(r, Outcome))
    assert len(set(versions)) == writers, "each endorsement has its own stream version"
    state, _, _ = system.bus.load(STATEMENT, sid)
    assert len(active_endorsements(state)) == writers


def test_two_processes_on_one_stream_race_unseen_and_each_command_answers_for_itself(
    client: TestClient, keys: Keys, system: System
) -> None:
    sid = finalised(client, keys)
    other = bootstrap(system.settings)  # a second API process on the same database
    try:
        twice = uuid4()
        retried = replace(endorsement(sid, 99), metadata=Metadata(idempotency_key="k-1"))
        calls = [
            lambda n=n, lanes=(system.lanes if n % 2 else other.lanes): lanes.handle(
                STATEMENT, sid, endorsement(sid, n)
            )
            for n in range(20)
        ]
        # The same organisation twice (one must be refused) and one request sent twice at
        # once under the same idempotency key (one endorsement, the same answer twice).
        calls += [
            lambda: system.lanes.handle(STATEMENT, sid, endorsement(sid, 50, twice)),
            lambda: system.lanes.handle(STATEMENT, sid, endorsement(sid, 51, twice)),
            lambda: system.lanes.handle(STATEMENT, sid, retried),
            lambda: system.lanes.handle(STATEMENT, sid, retried),
        ]
        results = run_all(calls)
    finally:
        other.close()

    assert all(isinstance(r, Outcome) for r in results[:20]), results[:20]
    pair = results[20:22]
    assert sorted(type(r).__name__ for r in pair) == ["AlreadyEndorsed", "Outcome"], pair
    assert any(isinstance(r, AlreadyEndorsed) for r in pair)
    first, second = results[22:]
    assert isinstance(first, Outcome) and isinstance(second, Outcome)
    assert first.version == second.version and first.recorded == second.recorded
    state, version, _ = system.bus.load(STATEMENT, sid)
    assert len(active_endorsements(state)) == 22
    assert version == len(system.store.read_stream(sid))
    keyed = [r for r in system.store.read_stream(sid) if r.metadata.get("idempotency_key") == "k-1"]
    assert len(keyed) == 1


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_two_processes_take_turns_on_a_stream_they_keep_racing_for(
    client: TestClient, keys: Keys, system: System
) -> None:
    """Once a stream is contended (infra/streamlocks.py), a process's leader waits for the
    other's batch to be appended instead of deciding on the state before it: the batch the
    other process held up is not decided twice, and both commands answer."""
    sid = finalised(client, keys)
    other = bootstrap(system.settings)  # a second API process on the same database
    conflicts: list[str] = []
    try:
        for name, lanes in (("this", system.lanes), ("other", other.lanes)):
            locks = lanes.locks
            assert locks is not None
            for _ in range(CONFLICTS):  # as if they had been racing for it
                locks.conflicted(sid)
            real = locks.conflicted
            locks.conflicted = (  # type: ignore[method-assign]
                lambda stream, name=name, real=real: (conflicts.append(name), real(stream))
            )
        real_append = system.store.append_batch
        holding = threading.Event()

        def slow_append(*args: Any, **kwargs: Any) -> Any:
            holding.set()
            time.sleep(0.5)  # decided; the other process's command arrives meanwhile
            return real_append(*args, **kwargs)

        system.store.append_batch = slow_append  # type: ignore[method-assign]

        def later() -> Outcome:
            assert holding.wait(10)
            return other.lanes.handle(STATEMENT, sid, endorsement(sid, 2))

        first, second = run_all(
            [lambda: system.lanes.handle(STATEMENT, sid, endorsement(sid, 1)), later]
        )
    finally:
        other.close()
    assert isinstance(first, Outcome) and isinstance(second, Outcome), (first, second)
    assert conflicts == [], "neither process decided on a state the other had moved past"
    assert second.version == first.version + 1
    state, _, _ = system.bus.load(STATEMENT, sid)
    assert len(active_endorsements(state)) == 2


def test_a_fold_kept_by_one_process_forgets_a_name_erased_by_another(
    client: TestClient, keys: Keys, system: System
) -> None:
    sid = finalised(client, keys)
    other = bootstrap(system.settings)
    try:
        job = endorsement(sid, 7)
        system.lanes.handle(STATEMENT, sid, job)
        kept = other.lanes.load(STATEMENT, sid)
        [signed] = active_endorsements(kept.state)
        assert signed.signatory_name.value == "Signatory 7"
        erased = client.post(
            "/v1/people/erase",
            headers=keys.admin,
            json={"person_id": str(job.command.person_id)},
        )
        assert erased.status_code == 200, erased.text
        [after] = active_endorsements(other.lanes.load(STATEMENT, sid).state)
        assert after.signatory_name.erased, "the other process read the erasure"
        assert after.organisation_id == signed.organisation_id, "the endorsement stays"
    finally:
        other.close()


def test_the_kept_folds_are_bounded_in_events_and_keep_the_stream_used_last(
    client: TestClient, keys: Keys, system: System
) -> None:
    """Many long streams do not grow a process without bound: past ``cache_events`` the least
    recently used are forgotten (and folded again, equal, when next used); the stream used
    last is kept however long it is."""
    short, middle, long_ = (finalised(client, keys) for _ in range(3))
    for sid, extra in ((short, 0), (middle, 10), (long_, 40)):
        for n in range(extra):
            system.lanes.handle(STATEMENT, sid, endorsement(sid, n))
    lanes = Lanes(system.bus, system.lanes._epoch, cache_events=60)
    size = {sid: lanes.load(STATEMENT, sid).version for sid in (short, middle)}
    assert lanes.kept() == size, "both fit"
    size[long_] = lanes.load(STATEMENT, long_).version
    assert size[long_] > 40 and size[short] + size[middle] + size[long_] > 60
    kept = lanes.kept()
    assert list(kept)[-1] == long_ and sum(kept.values()) <= 60
    assert short not in kept, "the least recently used went first"

    alone = Lanes(system.bus, system.lanes._epoch, cache_events=10)
    assert alone.load(STATEMENT, long_).version == size[long_]
    assert alone.kept() == {long_: size[long_]}, "longer than the bound, but used last"
    refolded = alone.load(STATEMENT, short)
    assert alone.kept() == {short: size[short]}
    assert refolded.state == system.lanes.load(STATEMENT, short).state


def test_the_bound_on_kept_folds_is_a_setting(system: System) -> None:
    configured = type(system.settings)(
        **{
            **system.settings.model_dump(by_alias=True),
            "CONCORD_FOLD_CACHE_EVENTS": "7",
        }
    )
    other = bootstrap(configured)
    try:
        assert other.lanes.cache_events == 7
        assert system.lanes.cache_events == 40_000
    finally:
        other.close()


class CountingBus:
    """The bus, counting the events its catch-ups fold (to see a fold done twice)."""

    def __init__(self, bus: Any) -> None:
        self.bus = bus
        self.folded = 0
        self._lock = threading.Lock()

    def catch_up(self, decider: Any, stream_id: UUID, snapshot: Any = None) -> Any:
        caught_up = self.bus.catch_up(decider, stream_id, snapshot)
        with self._lock:
            self.folded += caught_up.version - (snapshot.version if snapshot else 0)
        return caught_up

    def __getattr__(self, name: str) -> Any:
        return getattr(self.bus, name)


def test_concurrent_readers_of_a_stale_fold_catch_it_up_once(
    client: TestClient, keys: Keys, system: System
) -> None:
    """A process keeps a statement, another appends a long run of endorsements to it, then
    eight readers arrive together: the run is read and folded once, not once per reader."""
    sid = finalised(client, keys)
    bus = CountingBus(system.bus)
    lanes = Lanes(bus, system.lanes._epoch)  # type: ignore[arg-type]
    kept = lanes.load(STATEMENT, sid).version
    jobs = [endorsement(sid, n) for n in range(300)]
    results, _ = system.bus.handle_batch(STATEMENT, sid, jobs)
    assert not [r for r in results if isinstance(r, Exception)]
    loaded = run_all([lambda: lanes.load(STATEMENT, sid)] * 8)
    assert {s.version for s in loaded} == {kept + 300}  # type: ignore[union-attr]
    assert bus.folded == kept + 300, "each event folded once, by the first reader"


def count_reads(system: System, monkeypatch: Any) -> list[UUID]:
    """The streams read from now on, one entry per ``read_stream`` call."""
    reads: list[UUID] = []
    real = system.store.read_stream

    def counted(stream_id: UUID, **kwargs: Any) -> Any:
        reads.append(stream_id)
        return real(stream_id, **kwargs)

    monkeypatch.setattr(system.store, "read_stream", counted)
    return reads


def test_a_command_answers_with_the_state_it_left_without_reading_the_stream_again(
    client: TestClient, keys: Keys, system: System, monkeypatch: Any
) -> None:
    """The statement a command answers with is what the process kept after running it: the
    command's own catch-up is the only read of the stream (it was two, one of them under the
    stream's fold lock, which every answer on a hot statement queued for)."""
    drafted = draft(client, keys)
    url = f"/v1/statements/{drafted['sid']}"
    organiser = drafted["organiser"]
    before = client.get(url, headers=organiser).json()
    reads = count_reads(system, monkeypatch)
    area = before["sections"][0]["thematic_area"]
    r = client.post(
        f"{url}/recommendations",
        headers=organiser,
        json={"thematic_area": area, "text": "One more.", "addressed_to": []},
    )
    assert r.status_code == 201, r.text
    answer = r.json()
    assert answer["version"] == before["version"] + 1
    assert r.headers["ETag"] == f'"{answer["version"]}"'
    texts = [x["text"] for s in answer["sections"] for x in s["recommendations"]]
    assert "One more." in texts
    assert len(reads) <= 1
    assert client.get(url, headers=organiser).json() == answer, "a later read shows the same"


def test_what_a_process_kept_answers_no_command_once_someone_was_erased(
    client: TestClient, keys: Keys, system: System, monkeypatch: Any
) -> None:
    """A kept fold may hold a name opened before an erasure: it answers a command only while
    no key has been deleted since it was kept (else the answer is folded again)."""
    sid = finalised(client, keys)
    org = uuid4()
    results, _ = system.bus.handle_batch(STATEMENT, sid, [endorsement(sid, 1, org)])
    assert not [r for r in results if isinstance(r, Exception)]
    kept = system.lanes.load(STATEMENT, sid)
    reads = count_reads(system, monkeypatch)
    assert system.lanes.load(STATEMENT, sid, at_least=kept.version) is kept
    assert reads == []
    system.lanes.load(STATEMENT, sid, at_least=kept.version + 1)
    assert reads == [sid], "not that far: caught up"
    assert system.store.forget(person_id(f"{org}/Signatory 1"))
    again = system.lanes.load(STATEMENT, sid, at_least=kept.version)
    assert again is not kept, "folded again"
    assert again.version == kept.version
