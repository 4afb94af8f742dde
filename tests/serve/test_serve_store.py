"""The job store's queue rules on SQLite and on PostgreSQL: claims, leases, re-queues, attempt limits, fencing,
idempotency, concurrent claims."""

from __future__ import annotations

import threading

import pytest

from magihuman.serve.store import IdempotencyConflict, JobStore, QueueFull


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'jobs.sqlite3'}"
    return request.getfixturevalue("postgres").new_database()


@pytest.fixture
def store(url):
    store = JobStore(url)
    yield store
    store.close()


def add(store: JobStore, n: int, *, model: str = "distill", max_attempts: int = 3, limit: int = 1000) -> list[str]:
    ids = []
    for i in range(n):
        job, created = store.create(job_id=f"video_{i:032x}", model=model, prompt="p", params={"seconds": 1, "size":
                                    "64x64", "seed": i}, notices=[], fingerprint=str(i), max_attempts=max_attempts,
                                    queue_limit=limit)
        assert created
        ids.append(job.id)
    return ids


def test_claims_in_order_and_by_model(store):
    first, second = add(store, 2)
    add_base = store.create(job_id="video_" + "b" * 32, model="base", prompt="p", params={}, notices=[],
                            fingerprint="b", max_attempts=3, queue_limit=10)[0]
    assert store.claim("w1", ["distill"], 10).id == first
    assert store.claim("w1", ["distill"], 10).id == second
    assert store.claim("w1", ["distill"], 10) is None
    claimed = store.claim("w2", ["base"], 10)
    assert claimed.id == add_base.id and claimed.attempts == 1 and claimed.worker_id == "w2"


def test_expired_lease_requeues_then_fails_after_max_attempts(store):
    (job_id,) = add(store, 1, max_attempts=2)
    run1 = store.claim("w1", ["distill"], 5.0, now=100.0)
    assert store.reap_expired(now=104.0) == (0, 0)  # lease still valid
    assert store.reap_expired(now=106.0) == (1, 0)
    assert store.get(job_id).status == "queued"
    run2 = store.claim("w2", ["distill"], 5.0, now=107.0)
    assert run2.attempts == 2
    # the first run, still alive somewhere, can no longer touch the job (fencing on the attempt number)
    assert not store.heartbeat(run1, 5.0, progress=50)
    assert not store.complete(run1, "attempt-1.mp4", {})
    assert not store.fail(run1, "generation_failed", "late")
    assert store.reap_expired(now=113.0) == (0, 1)
    failed = store.get(job_id)
    assert failed.status == "failed" and failed.error_code == "worker_lost" and failed.attempts == 2
    assert not store.complete(run2, "attempt-2.mp4", {})


def test_complete_records_output_and_stage_times(store):
    (job_id,) = add(store, 1)
    run = store.claim("w1", ["distill"], 30)
    assert store.heartbeat(run, 30, progress=40)
    assert store.get(job_id).progress == 40
    assert store.complete(run, "attempt-1.mp4", {"denoise": 1.5, "video decode": 0.5})
    done = store.get(job_id)
    assert (done.status, done.progress, done.output) == ("completed", 100, "attempt-1.mp4")
    assert store.stage_stats() == {"denoise": (1, 1.5), "video decode": (1, 0.5)}
    assert not store.complete(run, "attempt-1.mp4", {})  # only once


def test_cancel_and_delete(store):
    queued, running = add(store, 2)
    run = store.claim("w1", ["distill"], 30)
    assert run.id == queued
    assert store.cancel(queued).status == "cancelled"
    assert not store.heartbeat(run, 30)  # the worker learns it at its next step
    assert store.delete(running).status == "queued"
    assert store.get(running) is None and store.get(running, include_deleted=True).status == "cancelled"
    assert store.claim("w1", ["distill"], 30) is None


def test_release_does_not_count_an_attempt(store):
    (job_id,) = add(store, 1)
    run = store.claim("w1", ["distill"], 30)
    assert store.release(run)
    job = store.get(job_id)
    assert (job.status, job.attempts, job.worker_id) == ("queued", 0, None)


def test_idempotency_and_queue_limit(store):
    def create(key, fingerprint, i):
        return store.create(job_id=f"video_{i:032x}", model="distill", prompt="p", params={}, notices=[],
                            fingerprint=fingerprint, max_attempts=3, queue_limit=2, idempotency_key=key)

    job, created = create("k1", "f1", 1)
    again, created_again = create("k1", "f1", 2)
    assert created and not created_again and again.id == job.id
    with pytest.raises(IdempotencyConflict):
        create("k1", "other", 3)
    create(None, "f4", 4)
    with pytest.raises(QueueFull) as info:
        create(None, "f5", 5)
    assert info.value.retry_after >= 1
    assert create("k1", "f1", 6)[0].id == job.id  # a replay is answered even when the queue is full


def test_concurrent_claims_take_each_job_once(url):
    setup = JobStore(url)
    ids = add(setup, 60)
    taken: list[list[str]] = [[] for _ in range(4)]

    def claimer(index: int) -> None:
        store = JobStore(url)  # its own connections, as a worker process has
        while (job := store.claim(f"w{index}", ["distill"], 30)) is not None:
            taken[index].append(job.id)
            assert store.complete(job, "x.mp4", {})
        store.close()

    threads = [threading.Thread(target=claimer, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    everything = [job_id for part in taken for job_id in part]
    assert sorted(everything) == sorted(ids)  # each exactly once
    assert all(setup.get(job_id).attempts == 1 for job_id in ids)
    setup.close()
