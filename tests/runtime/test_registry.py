"""Thread ids: opaque, never repeated, not even by a forked child."""

from __future__ import annotations

import os

from xml_pipeline._runtime.registry import new_thread_id


def test_thread_ids_are_96_random_bits_and_never_repeat() -> None:
    ids = [new_thread_id() for _ in range(50_000)]
    assert len(set(ids)) == len(ids)
    assert all(len(i) == 24 and int(i, 16) >= 0 for i in ids[:100])


def test_a_forked_child_never_hands_out_the_ids_its_parent_will() -> None:
    new_thread_id()  # the parent holds unused random bytes now
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its next ids and leave at once
        os.write(write, ",".join(new_thread_id() for _ in range(50)).encode())
        os._exit(0)
    os.close(write)
    child = set(os.read(read, 1 << 16).decode().split(","))
    os.close(read)
    os.waitpid(pid, 0)
    parent = {new_thread_id() for _ in range(50)}
    assert len(child) == 50 and not child & parent
