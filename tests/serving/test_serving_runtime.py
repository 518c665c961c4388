"""Admission control and the worker-thread stream bridge, without HTTP."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from lmforge.serving.runtime import Admission, QueueFull, Runner


def test_admission_is_first_come_first_served_and_bounded():
    async def scenario() -> list[str]:
        gate = Admission(slots=2, queue_size=2)
        order: list[str] = []
        await gate.acquire()
        await gate.acquire()
        assert gate.active == 2

        async def wait(tag: str) -> None:
            await gate.acquire()
            order.append(tag)

        first = asyncio.create_task(wait("first"))
        await asyncio.sleep(0)
        second = asyncio.create_task(wait("second"))
        await asyncio.sleep(0)
        assert gate.waiting == 2
        with pytest.raises(QueueFull):
            await gate.acquire()
        gate.release()
        await first
        gate.release()
        await second
        assert gate.active == 2 and gate.waiting == 0
        gate.release()
        gate.release()
        assert gate.active == 0
        return order

    assert asyncio.run(scenario()) == ["first", "second"]


def test_a_waiter_that_gives_up_does_not_leak_a_slot():
    async def scenario() -> Admission:
        gate = Admission(slots=1, queue_size=1)
        await gate.acquire()
        quitter = asyncio.create_task(gate.acquire())
        await asyncio.sleep(0)
        quitter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await quitter
        assert gate.waiting == 0
        gate.release()
        assert gate.active == 0
        await gate.acquire()  # the slot is free again
        return gate

    assert asyncio.run(scenario()).active == 1


def test_zero_queue_refuses_at_once():
    async def scenario() -> None:
        gate = Admission(slots=1, queue_size=0)
        await gate.acquire()
        with pytest.raises(QueueFull):
            await gate.acquire()

    asyncio.run(scenario())


def test_stream_cancel_closes_the_iterator_and_frees_the_slot():
    produced: list[int] = []
    closed = threading.Event()
    step = threading.Semaphore(0)

    def numbers():
        try:
            for i in range(1000):
                step.acquire(timeout=5)
                produced.append(i)
                yield i
        finally:
            closed.set()

    async def scenario() -> list[int]:
        runner = Runner(slots=1, queue_size=0)
        handle = await runner.stream(numbers)
        got = []
        step.release()
        step.release()
        async for item in handle:
            got.append(item)
            if len(got) == 2:
                handle.cancel()  # what the server does when the client goes away
                break
        step.release()  # let the worker finish the step it may be waiting in
        await asyncio.get_running_loop().run_in_executor(None, closed.wait, 5)
        for _ in range(50):
            if runner.active == 0:
                break
            await asyncio.sleep(0.01)
        assert runner.active == 0
        runner.shutdown()
        return got

    assert asyncio.run(scenario()) == [0, 1]
    assert closed.is_set()
    assert len(produced) <= 3


def test_call_runs_in_a_worker_thread_and_reraises():
    async def scenario() -> None:
        runner = Runner(slots=2, queue_size=0)
        main = threading.get_ident()
        assert await runner.call(threading.get_ident) != main
        with pytest.raises(ZeroDivisionError):
            await runner.call(lambda: 1 / 0)
        await asyncio.sleep(0.05)
        assert runner.active == 0
        runner.shutdown()

    asyncio.run(scenario())


def test_fair_lock_hands_over_in_arrival_order():
    from lmforge.serving.runtime import FairLock

    lock = FairLock()
    order: list[int] = []
    lock.acquire()
    threads = []
    for i in range(5):
        t = threading.Thread(target=lambda i=i: (lock.acquire(), order.append(i), lock.release()))
        t.start()
        threads.append(t)
        while len(lock._waiters) != i + 1:  # wait until thread i is queued before starting the next
            time.sleep(0.001)
    lock.release()
    for t in threads:
        t.join(5)
    assert order == [0, 1, 2, 3, 4]
    assert lock.acquire() is None and not lock._waiters  # free again: taken at once
    lock.release()


def test_fair_lock_lets_streams_take_turns():
    """Two threads that each re-acquire the lock in a tight loop alternate instead of one running away."""
    from lmforge.serving.runtime import FairLock

    lock = FairLock()
    trace: list[str] = []
    start = threading.Barrier(2)

    def worker(tag: str) -> None:
        start.wait()
        for _ in range(200):
            with lock:
                trace.append(tag)
                time.sleep(0.0001)

    threads = [threading.Thread(target=worker, args=(t,)) for t in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    middle = trace[20:-20]  # both running: strict alternation
    runs = sum(1 for x, y in zip(middle, middle[1:]) if x == y)
    assert runs <= 2, "".join(trace)
