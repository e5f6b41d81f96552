"""The C heap of the processes that move a batch's rows: freed large buffers go back to the system.

glibc serves a request of 128 KiB or more with its own mapping, unmapped when freed, but each time it
unmaps one it raises that threshold to the freed size (up to 32 MiB): from then on DuckDB's and Arrow's
multi-megabyte buffers (a frame of rows for Great Expectations, a vector of strings) come from the heap,
and the space they leave stays in the process, fragmented. The more frames a batch has, the more of it:
the run process of a 10M-row batch held ~20 MB more than a 1M one's while GX checked its rows. A fixed
threshold (glibc's default, set explicitly, which stops the raising) keeps such buffers mapped.
"""

from __future__ import annotations

import contextlib
import ctypes
from functools import cache

M_MMAP_THRESHOLD = -3  # glibc's malloc.h
MMAP_THRESHOLD = 128 * 1024  # glibc's default


@cache
def return_large_buffers() -> bool:
    """Fix glibc's mmap threshold for this process (once); False where the C library has no `mallopt`
    (not glibc) or refuses it."""
    with contextlib.suppress(OSError, AttributeError):
        return ctypes.CDLL(None).mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    return False
