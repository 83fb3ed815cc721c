"""worker.resp: the worker's commands in Redis's protocol, byte for byte what hiredis packs."""

from __future__ import annotations

from typing import Any

import hiredis
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.resp import TABLE, Command, pack


def hiredis_pack(commands: list[Command]) -> bytes:
    return b"".join(hiredis.pack_command(c) for c in commands)  # type: ignore[arg-type]


args = st.one_of(st.binary(max_size=40), st.text(max_size=20), st.integers(),
                 st.floats(allow_nan=False))
commands = st.lists(st.tuples(st.text(min_size=1, max_size=8)).flatmap(
    lambda name: st.lists(args, max_size=12).map(lambda rest: (*name, *rest))), max_size=6)


@settings(max_examples=2000, deadline=None)
@given(commands)
def test_commands_are_packed_as_hiredis_packs_them(cmds: list[Command]) -> None:
    assert pack(cmds) == hiredis_pack(cmds)


def test_a_transaction_as_redis_reads_it() -> None:
    packed = pack([("MULTI",), ("HSET", "jobs", "job-1", b'{"id":"job-1"}'),
                   ("ZADD", "order", -1.5, "job-1", 1_700_000_000_000, "job-2"), ("EXEC",)])
    assert packed == (b"*1\r\n$5\r\nMULTI\r\n"
                      b"*4\r\n$4\r\nHSET\r\n$4\r\njobs\r\n$5\r\njob-1\r\n"
                      b"$14\r\n{\"id\":\"job-1\"}\r\n"
                      b"*6\r\n$4\r\nZADD\r\n$5\r\norder\r\n$4\r\n-1.5\r\n$5\r\njob-1\r\n"
                      b"$13\r\n1700000000000\r\n$5\r\njob-2\r\n"
                      b"*1\r\n$4\r\nEXEC\r\n")


def test_values_and_commands_longer_than_the_table_of_headers() -> None:
    long_value = b"x" * (TABLE + 5)
    many = ("SADD", "seen", *(f"id-{i}" for i in range(TABLE)))
    cmds: list[Command] = [("SET", "k", long_value), many, ("GET", "é" * TABLE),
                           (long_value, "k"), (), ("PING",), (), (long_value,)]
    packed = pack(cmds)
    assert packed.startswith(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$%d\r\nxxx" % (TABLE + 5))
    assert b"*%d\r\n$4\r\nSADD\r\n" % (TABLE + 2) in packed
    assert packed == hiredis_pack(cmds)


@pytest.mark.parametrize("bad", [True, None, bytearray(b"x"), [1], 1 + 2j])
def test_an_argument_of_another_type_is_refused_as_hiredis_refuses_it(bad: Any) -> None:
    # (compiled, None, bytearray, lists and complex numbers are refused by mypyc's check of
    # the declared argument type, before our own)
    with pytest.raises(TypeError):
        pack([("SET", "k", bad)])
    with pytest.raises(TypeError):
        hiredis.pack_command(("SET", "k", bad))  # type: ignore[arg-type]


def test_a_float_subclass_or_a_memoryview_is_refused_though_hiredis_would_take_it() -> None:
    class Score(float):
        pass

    for bad in (Score(1.5), memoryview(b"x")):
        with pytest.raises(TypeError):
            pack([("ZADD", "k", bad, "m")])  # type: ignore[list-item]


def test_an_int_too_long_to_write_out_is_an_error() -> None:
    # (compiled, formatting it with b"%d" crashed the process: hiredis does too)
    with pytest.raises(ValueError, match="4300 digits"):
        pack([("SET", "k", 10**5000)])
