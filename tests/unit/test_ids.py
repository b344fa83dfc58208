from __future__ import annotations

from openpse.domain import ids
from openpse.domain.ids import new_id, prefix_of


def test_ids_strictly_increase_within_a_millisecond():
    made = [new_id("evt_") for _ in range(5000)]  # many per millisecond
    assert made == sorted(made) and len(set(made)) == len(made)


def test_ids_keep_increasing_when_the_clock_steps_back(monkeypatch):
    first = new_id("pay_")
    monkeypatch.setattr(ids.time, "time", lambda: 1_000_000.0)  # back to 1970
    later = [new_id("pay_") for _ in range(10)]
    assert [first, *later] == sorted([first, *later])


def test_shape_and_prefix():
    value = new_id("ak_test_")
    assert value.startswith("ak_test_") and len(value) == len("ak_test_") + 26
    assert prefix_of(value) == "ak_test_"


def test_encoding_is_crockford_base32_of_the_value_most_significant_first():
    import random

    from openpse.domain import ids

    rng = random.Random(7)
    for length in (1, 2, 10, 25, 26):
        for value in [0, (1 << (5 * length)) - 1, *(rng.getrandbits(5 * length)
                                                      for _ in range(200))]:
            expected = "".join(ids._ALPHABET[(value >> (5 * (length - 1 - i))) & 31]
                               for i in range(length))
            assert ids._encode(value, length) == expected
    assert ids._encode(1 << 130, 26) == "0" * 26  # bits above the length are not digits


def test_a_forked_child_does_not_hand_out_its_parents_randomness():
    """Ids draw on a pool of OS randomness; a child made by fork must refill it rather than
    repeat the bytes its parent is about to use (same millisecond: same id otherwise)."""
    import os

    new_id("pay_")  # the parent's pool holds unread bytes now
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next id, then leave without running anything else
        try:
            os.write(write, new_id("pay_", now_ms=1_700_000_000_000).encode())
        finally:
            os._exit(0)
    os.close(write)
    child = os.read(read, 100).decode()
    os.close(read)
    os.waitpid(pid, 0)
    parent = new_id("pay_", now_ms=1_700_000_000_000)
    assert child.startswith("pay_") and len(child) == len(parent)
    assert child != parent


def test_ids_from_several_threads_are_all_different():
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(8) as pool:
        made = list(pool.map(lambda _: new_id("evt_", now_ms=1_700_000_000_000), range(4000)))
    assert len(set(made)) == len(made)
