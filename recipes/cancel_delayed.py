"""Cancel a delayed message: ``abort(message_id, mode="cancel")`` before it is due.

Two reminders are sent with ``send_with_options(delay=...)``; one of them
is cancelled while it waits for its time.  When the delay is over the
worker takes both, skips the cancelled one without running its actor (the
message is marked failed, dead-lettered, and dramatiq logs "Message ...
was skipped."), and runs the other.

A request only lives for ``abort_ttl`` milliseconds (90 s unless the
``Abortable`` middleware says otherwise), so for a message delayed longer
than that, pass an ``abort_ttl`` that outlasts the delay, as this recipe
does.  A cancel is ignored by a message that has already started; use the
default ``mode="abort"`` to stop those too.

Run it::

    python recipes/cancel_delayed.py                                # in memory
    REDIS_URL=redis://localhost:6379/0 python recipes/cancel_delayed.py  # on Redis

It exits with status 0 when the cancelled reminder never ran and the other did.
"""

from __future__ import annotations

import threading
import time

from _setup import STEP_TIMEOUT, Recipe, expect

from dramatiq_abort import abort, abortable_actor

#: Milliseconds both reminders are delayed by.
DELAY = 1000

RECIPE = Recipe("cancel_delayed")
sent_to: list[str] = []
lock = threading.Lock()


@abortable_actor()
def send_reminder(user: str) -> None:
    """Send ``user`` a reminder (here: print it and note who got one)."""
    print(f"  send_reminder: reminding {user}")
    with lock:
        sent_to.append(user)


def main() -> None:
    """Delay two reminders, cancel one, and check that only the other one ran."""
    with RECIPE, RECIPE.worker():
        sent = time.monotonic()
        kept = send_reminder.send_with_options(args=("ada",), delay=DELAY)
        cancelled = send_reminder.send_with_options(args=("bob",), delay=DELAY)
        print(f"main: sent reminders for ada and bob, both delayed by {DELAY} ms")

        ttl = DELAY + 60_000  # outlasts the delay
        abort(cancelled.message_id, mode="cancel", abort_ttl=ttl)
        print(f'main: abort(bob_message.message_id, mode="cancel", abort_ttl={ttl})')

        timeout = DELAY / 1000 + STEP_TIMEOUT
        kept_outcome = RECIPE.outcomes.wait(kept, timeout)
        cancelled_outcome = RECIPE.outcomes.wait(cancelled, timeout)
        waited_ms = (time.monotonic() - sent) * 1000
        print(f"main: after {waited_ms:.0f} ms, ada's reminder {kept_outcome}")
        print(f"main: bob's reminder was {cancelled_outcome}: its actor never ran")

        expect(
            cancelled_outcome == "skipped", f"bob's reminder should be skipped: {cancelled_outcome}"
        )
        expect(kept_outcome == "succeeded", f"ada's reminder should have run: {kept_outcome}")
        expect(sent_to == ["ada"], f"reminders went to {sent_to}, not only to ada")
        expect(waited_ms >= DELAY, "the reminders ran before their delay was over")
    RECIPE.ok("the cancelled delayed message never ran; the other one did")


if __name__ == "__main__":
    main()
