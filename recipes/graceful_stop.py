"""Stop a long loop gracefully: the actor sees the abort coming and ends cleanly.

``abort(message_id, abort_timeout=3000)`` gives a running message three
seconds of grace before ``Abort`` is raised in it.  The actor here exports
rows to a CSV file; at each row it looks at its ``abort_scope()``.  Once
``scope.requested`` is true (``scope.remaining`` says how many
milliseconds are left), it writes a last line saying where it stopped and
returns, well within the grace: the message succeeds, ``Abort`` is never
raised, and the file ends cleanly instead of in the middle of a row.
``abort_requested()`` gives the same countdown without a scope.

Run it::

    python recipes/graceful_stop.py                                # in memory
    REDIS_URL=redis://localhost:6379/0 python recipes/graceful_stop.py  # on Redis

It exits with status 0 when the export stopped cleanly within the grace.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time

from _setup import Recipe, expect, wait_for

from dramatiq_abort import abort, abort_scope, abortable_actor

#: Milliseconds of grace the abort gives the export.
GRACE = 3000
#: Rows to export: 2000 rows of 5 ms take 10 s when nobody stops the export.
ROWS = 2000

RECIPE = Recipe("graceful_stop")
exporting = threading.Event()


@abortable_actor()
def export_rows(path: str, rows: int) -> None:
    """Write ``rows`` rows to the CSV file ``path``; stop after a whole row when asked to."""
    with open(path, "w", encoding="utf-8") as out, abort_scope() as scope:
        out.write("row,square\n")
        for row in range(rows):
            if scope.requested:
                print(
                    f"  export_rows: abort requested with {scope.remaining:.0f} ms of grace "
                    f"left; stopping cleanly after {row} rows"
                )
                out.write(f"# stopped early after {row} rows\n")
                return
            out.write(f"{row},{row * row}\n")
            time.sleep(0.005)  # the slow part of producing one row
            if row == 50:
                exporting.set()
        out.write("# complete\n")


def main() -> None:
    """Start an export, abort it with a grace period, and check that it ended cleanly."""
    with RECIPE, RECIPE.worker(), tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "squares.csv")
        message = export_rows.send(path, ROWS)
        wait_for(exporting, "export_rows to get going")

        print(f"main: abort(message_id, abort_timeout={GRACE}): {GRACE} ms to stop, then Abort")
        called = time.monotonic()
        abort(message.message_id, abort_timeout=GRACE)
        outcome = RECIPE.outcomes.wait(message)
        took_ms = (time.monotonic() - called) * 1000
        print(f"main: the message {outcome}, {took_ms:.0f} ms after abort()")

        with open(path, encoding="utf-8") as exported:
            lines = exported.read().splitlines()
        print(f"main: {os.path.basename(path)} has {len(lines)} lines, the last: {lines[-1]!r}")

        expect(outcome == "succeeded", f"the export should have returned normally, it {outcome}")
        expect(took_ms < GRACE, f"the export took {took_ms:.0f} ms to stop, more than the grace")
        expect(lines[-1].startswith("# stopped early"), "the export did not stop early")
        expect(all(line.count(",") == 1 for line in lines[1:-1]), "a row was left half-written")
    RECIPE.ok(f"the export stopped by itself {took_ms:.0f} ms into a {GRACE} ms grace period")


if __name__ == "__main__":
    main()
