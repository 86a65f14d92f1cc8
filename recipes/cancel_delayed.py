"""Cancel a delayed message: ``abort(message, mode="cancel")`` before it is due.

Two reminders are sent with ``send_with_options(delay=...)``; one of them
is cancelled while it waits for its time.  When the delay is over the
worker takes both, skips the cancelled one without running its actor (the
message is marked failed, dead-lettered, and dramatiq logs "Message ...
was skipped."), and runs the other.

Pass the ``Message`` that ``send_with_options`` returned, not only its id:
the request then lives until the message's ETA plus ``abort_ttl``, however
far the ETA.  This recipe gives ``abort_ttl=200`` (ms), far shorter than
the delay, to show it.  With a bare id the request lives ``abort_ttl``
only, as in the reference API (a worker that already holds the message in
its delay queue keeps the request alive, but one taken later would miss
it).  A cancel is ignored by a message that has already started; use the
default ``mode="abort"`` to stop those too.

Run it::

    python recipes/cancel_delayed.py                                # in memory
    REDIS_URL=redis://localhost:6379/0 python recipes/cancel_delayed.py  # on Redis

It exits with status 0 when the cancelled reminder never ran and the other did.
"""

from __future__ import annotations

import threading
import time

from _setup import STEP_TIMEOUT, Recipe, expect, fail

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

        status = abort(cancelled, mode="cancel", abort_ttl=200).status()
        print('main: abort(bob_message, mode="cancel", abort_ttl=200)')
        if status is None or status.expires_at is None or status.requested_at is None:
            fail("the cancel was not recorded")
        lives_ms = (status.expires_at - status.requested_at).total_seconds() * 1000
        print(f"main: the request lives {lives_ms:.0f} ms: until the ETA, then abort_ttl")
        expect(lives_ms >= DELAY, "the request would expire before the message is due")

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
