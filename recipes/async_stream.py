"""Stop an ``async def`` actor that streams work: at a batch boundary, or with a rollback.

The actor copies records from an async stream (an async generator, like a
paginated API or a database cursor) into a JSON-lines file, committing
every ``BATCH`` records.  A record written since the last commit is not
kept until the next commit; a rollback takes it back.  Two ways to stop it:

* ``abort(message_id, abort_timeout=2000)``: between records the coroutine
  looks at ``abort_requested()``, which counts the grace down.  Once it
  sees the request, it finishes the batch under way, commits it and
  returns, well within the grace.  The message succeeds, ``Abort`` is never
  thrown, and the file ends on a whole batch.
* ``abort(message_id)``: ``Abort`` is thrown into the coroutine at the
  ``await`` where it waits, here a read from a stream that stalled in the
  middle of a batch.  The ``finally:`` block awaits the rollback of the
  records written since the last commit, then the message fails with
  ``Abort`` (not retried).  The same rollback runs if a graceful abort's
  grace runs out before the batch is done.

Either way the file holds whole batches only.  dramatiq runs ``async def``
actors on its event loop thread, which needs its ``AsyncIO`` middleware.

Run it::

    python recipes/async_stream.py                                # in memory
    REDIS_URL=redis://localhost:6379/0 python recipes/async_stream.py  # on Redis

It exits with status 0 when the graceful abort stopped the copy at a batch
boundary and the plain abort rolled the unfinished batch back.
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import dramatiq
from _setup import Recipe, expect, wait_for
from dramatiq.middleware import AsyncIO

from dramatiq_abort import Abort, abort, abort_requested

#: Records per committed batch.
BATCH = 20
#: Records in the stream: 2000 records of 5 ms take 10 s when nobody stops the copy.
RECORDS = 2000
#: Milliseconds of grace the graceful abort gives the copy.
GRACE = 2000
#: Where the stream stalls in the second run: 7 records into its third batch.
STALL_AT = 2 * BATCH + 7

RECIPE = Recipe("async_stream", middleware=[AsyncIO()])
copying = threading.Event()
stalled = threading.Event()
#: Records each rollback took back, in order.
rollbacks: list[int] = []


async def read_records(count: int, stall_at: int | None) -> AsyncIterator[dict[str, int]]:
    """Yield ``count`` records, one every 5 ms; hang for a minute before record ``stall_at``."""
    for number in range(count):
        if number == stall_at:
            print(f"  read_records: the stream stalls before record {number}")
            stalled.set()
            await asyncio.sleep(60)  # a read that never gets its answer
        await asyncio.sleep(0.005)  # waiting for the next record
        yield {"id": number, "square": number * number}


class BatchFile:
    """A JSON-lines file written in batches: what a rollback takes back was never committed.

    A stand-in for an async database client: records go out as they come,
    ``commit()`` makes the batch durable, ``rollback()`` takes back what was
    written since the last commit.  Each awaits, as a round trip would.
    """

    def __init__(self, path: str) -> None:
        self._out = open(path, "w", encoding="utf-8")  # noqa: SIM115 (closed by close())
        self._committed_at = 0  # file offset after the last committed record
        #: Records committed so far.
        self.committed = 0
        #: Records written since the last commit.
        self.pending = 0

    async def write(self, record: dict[str, Any]) -> None:
        """Write one record; it is kept once the batch is committed."""
        self._out.write(json.dumps(record) + "\n")
        self.pending += 1
        await asyncio.sleep(0)

    async def commit(self) -> None:
        """Make the records written since the last commit durable."""
        await asyncio.sleep(0.001)  # the round trip; an Abort here leaves the batch pending
        self._out.flush()
        os.fsync(self._out.fileno())
        self._committed_at = self._out.tell()
        self.committed += self.pending
        self.pending = 0

    async def rollback(self) -> int:
        """Take back the records written since the last commit; return how many."""
        await asyncio.sleep(0.001)  # the round trip
        self._out.seek(self._committed_at)
        self._out.truncate()
        undone, self.pending = self.pending, 0
        return undone

    def close(self) -> None:
        """Close the file."""
        self._out.close()


@dramatiq.actor(max_retries=0)
async def copy_stream(path: str, count: int, stall_at: int | None = None) -> None:
    """Copy ``count`` streamed records to ``path`` in batches; stop at a batch boundary if asked."""
    sink = BatchFile(path)
    stopping = False
    try:
        async for record in read_records(count, stall_at):
            await sink.write(record)
            if sink.committed == 2 * BATCH and sink.pending == 5:
                copying.set()
            if not stopping and (left := abort_requested()) is not None:
                stopping = True
                print(
                    f"  copy_stream: abort requested with {left:.0f} ms of grace left, "
                    f"{sink.pending} records into batch {sink.committed // BATCH + 1}; "
                    "finishing that batch"
                )
            if sink.pending == BATCH:
                await sink.commit()
                if stopping:
                    print(
                        f"  copy_stream: stopping cleanly at a batch boundary, "
                        f"{sink.committed} records committed"
                    )
                    return
        await sink.commit()
    except Abort:
        print(f"  copy_stream: Abort arrived with {sink.pending} records uncommitted")
        raise  # let the abort end the message
    finally:
        if sink.pending:
            undone = await sink.rollback()
            rollbacks.append(undone)
            print(f"  copy_stream: rolled back the {undone} uncommitted records of the batch")
        sink.close()


def read_back(path: str) -> list[dict[str, int]]:
    """Return the records in ``path``; fail the recipe on a line that is not a whole record."""
    with open(path, encoding="utf-8") as copied:
        text = copied.read()
    expect(text == "" or text.endswith("\n"), "the file ends in the middle of a line")
    return [json.loads(line) for line in text.splitlines()]


def graceful(tmp: str) -> int:
    """Abort a flowing copy with a grace period; check it stopped by itself on a whole batch."""
    path = os.path.join(tmp, "graceful.jsonl")
    message = copy_stream.send(path, RECORDS)
    wait_for(copying, "copy_stream to commit its first batches")

    print(f"main: abort(message_id, abort_timeout={GRACE}) while the records flow")
    called = time.monotonic()
    abort(message.message_id, abort_timeout=GRACE)
    outcome = RECIPE.outcomes.wait(message)
    took_ms = (time.monotonic() - called) * 1000
    records = read_back(path)
    print(f"main: the message {outcome} {took_ms:.0f} ms after abort(); {len(records)} records")

    expect(outcome == "succeeded", f"the copy should have returned normally, it {outcome}")
    expect(not rollbacks, f"a graceful stop should roll nothing back, it rolled back {rollbacks}")
    expect(took_ms < GRACE, f"the copy took {took_ms:.0f} ms to stop, more than the grace")
    expect(2 * BATCH < len(records) < RECORDS, f"the copy did not stop early: {len(records)}")
    expect(len(records) % BATCH == 0, f"{len(records)} records is not a whole number of batches")
    expect([r["id"] for r in records] == list(range(len(records))), "records are missing")
    return len(records)


def hard(tmp: str) -> int:
    """Abort a copy whose stream stalled mid-batch; check the partial batch was rolled back."""
    copying.clear()
    path = os.path.join(tmp, "hard.jsonl")
    message = copy_stream.send(path, RECORDS, STALL_AT)
    wait_for(stalled, "the stream to stall")

    print("main: abort(message_id) while copy_stream awaits the stalled stream")
    abort(message.message_id)
    outcome = RECIPE.outcomes.wait(message)
    records = read_back(path)
    print(f"main: the message {outcome}; {len(records)} records in the file")

    expect(outcome == "failed with Abort", f"the copy should end with Abort: {outcome}")
    expect(
        rollbacks == [STALL_AT - 2 * BATCH],
        f"expected one rollback of the partial batch: {rollbacks}",
    )
    expect(len(records) == 2 * BATCH, f"expected the 2 committed batches, found {len(records)}")
    expect([r["id"] for r in records] == list(range(len(records))), "records are missing")
    return len(records)


def main() -> None:
    """Stop one copy gracefully and abort another mid-batch; check each file holds whole batches."""
    with RECIPE, RECIPE.worker(), tempfile.TemporaryDirectory() as tmp:
        kept = graceful(tmp)
        rolled = hard(tmp)
    RECIPE.ok(
        f"the graceful abort stopped at a batch boundary ({kept} records), "
        f"the plain abort rolled back its partial batch ({rolled} records kept)"
    )


if __name__ == "__main__":
    main()
