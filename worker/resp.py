"""Redis's protocol (RESP) for the commands the worker sends: a whole transaction in one piece.

hiredis' ``pack_command`` spent about 2,300 CPU instructions on every argument (most of it
formatting each ``$<length>`` header with ``sprintf``), and a commit has several arguments
per event: a sixth of the worker's CPU. Here each header is taken from a table and the pieces
are joined once; compiled with the pure core (monitor/compiled.py) it costs a fraction of
that. The bytes are hiredis' own, argument for argument (tests/test_resp.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

Arg = bytes | str | int | float
Command = tuple[Arg, ...]

CRLF: Final = b"\r\n"
TABLE: Final = 4096  # headers kept ready: "$0\r\n" to "$4095\r\n" (a job's state is ~1 KB)
_SIZES: Final = [b"$%d\r\n" % n for n in range(TABLE)]
_COUNTS: Final = [b"*%d\r\n" % n for n in range(TABLE)]
# The same after an argument, with the CRLF that ends it: one piece fewer per argument.
_NEXT_SIZES: Final = [CRLF + header for header in _SIZES]
_NEXT_COUNTS: Final = [CRLF + header for header in _COUNTS]


def pack(commands: Sequence[Command]) -> bytes:
    """``commands`` in Redis's protocol, as one piece to send. Arguments are bytes, str
    (sent as UTF-8), int or float (sent as ``repr`` gives it); anything else is a
    TypeError: a bool, None or a bytearray, as with hiredis, and also a float subclass
    (numpy's) or a memoryview, which hiredis would take."""
    parts: list[bytes] = []
    owed = False  # the last piece is an argument, whose CRLF goes with the next header
    for command in commands:
        count = len(command)
        if count < TABLE:
            parts.append((_NEXT_COUNTS if owed else _COUNTS)[count])
        else:
            parts.append(b"\r\n*%d\r\n" % count if owed else b"*%d\r\n" % count)
        sizes = _SIZES  # the first argument follows the count's own CRLF
        for arg in command:
            data = _encoded(arg)
            size = len(data)
            if size < TABLE:
                parts.append(sizes[size])
            else:
                parts.append(b"$%d\r\n" % size if sizes is _SIZES else b"\r\n$%d\r\n" % size)
            parts.append(data)
            sizes = _NEXT_SIZES
        owed = count > 0  # (an empty command's count header paid what was owed)
    if owed:
        parts.append(CRLF)
    return b"".join(parts)


def _encoded(arg: object) -> bytes:
    if isinstance(arg, bytes):
        return arg
    if isinstance(arg, str):
        return arg.encode()
    if type(arg) is int:
        return str(arg).encode()  # (compiled, b"%d" crashes on an int too long for str)
    if type(arg) is float:
        return repr(arg).encode()
    raise TypeError(f"a command's argument must be str, int, float or bytes, not "
                    f"{type(arg).__name__}")
