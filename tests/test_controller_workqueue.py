"""The controller's work queue: one entry per key, never two workers on one
key, no change lost, per-key exponential back-off."""

from __future__ import annotations

import asyncio

from hypothesis import given
from hypothesis import strategies as st

from mesh.controller.workqueue import Backoff, WorkQueue


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 5))


@given(st.lists(st.sampled_from("abcde"), max_size=30))
def test_each_key_is_queued_once_in_first_add_order(keys):
    async def main():
        queue = WorkQueue()
        for key in keys:
            queue.add(key)
        got = [await queue.get() for _ in range(len(queue))]
        assert got == list(dict.fromkeys(keys))

    run(main())


def test_a_key_added_while_worked_on_comes_back_after_done_not_before():
    async def main():
        queue = WorkQueue()
        queue.add("a")
        assert await queue.get() == "a"
        queue.add("a")
        queue.add("a")
        assert len(queue) == 0  # not handed to a second worker
        queue.done("a")
        assert len(queue) == 1 and await queue.get() == "a"
        queue.done("a")
        assert len(queue) == 0

    run(main())


def test_retries_back_off_exponentially_and_forget_resets():
    async def main():
        queue = WorkQueue(Backoff(base_s=0.01, cap_s=0.04))
        delays = [queue.retry("k") for _ in range(4)]
        assert delays == [0.01, 0.02, 0.04, 0.04]
        assert await queue.get() == "k"  # one timer per key: the first delay wins
        queue.forget("k")
        assert queue.failures("k") == 0

    run(main())


def test_close_wakes_waiting_workers():
    async def main():
        queue = WorkQueue()
        waiter = asyncio.create_task(queue.get())
        await asyncio.sleep(0)
        queue.close()
        assert await waiter is None
        queue.add("late")
        assert await queue.get() is None

    run(main())


@given(st.integers(0, 100))
def test_backoff_never_exceeds_its_cap(failures):
    assert 0 < Backoff(0.05, 60).delay(failures) <= 60
