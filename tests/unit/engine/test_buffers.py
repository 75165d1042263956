"""The loop's payload buffers: exact-length views of power-of-two buffers,
reused once given back, and no more kept than the pool's bound."""

from __future__ import annotations

from sheepdog_backend.engine.buffers import MIN_CLASS, BufferPool


def test_a_view_has_the_asked_length_and_a_given_back_buffer_is_reused() -> None:
    pool = BufferPool()
    view = pool.get(1_000_000)
    assert len(view) == 1_000_000 and len(view.obj) == 1 << 20  # type: ignore[arg-type]
    view[:] = b"\x01" * len(view)
    buffer = view.obj
    pool.put(view)
    again = pool.get(700_000)  # same size class
    assert again.obj is buffer and len(again) == 700_000
    assert pool.reused == 1 and pool.allocated == 1


def test_the_pool_keeps_no_more_than_its_bound() -> None:
    pool = BufferPool(max_bytes=2 * MIN_CLASS)
    views = [pool.get(MIN_CLASS) for _ in range(3)]
    for view in views:
        pool.put(view)
    assert pool.kept == 2 * MIN_CLASS
    pool.put(memoryview(bytearray(100)))  # not a pool buffer: ignored
    assert pool.kept == 2 * MIN_CLASS
