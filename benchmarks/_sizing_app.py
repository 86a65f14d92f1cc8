"""The dramatiq app that ``sizing.py`` runs with the real ``dramatiq`` command.

Configured by its environment: ``SIZING_BROKER`` and ``SIZING_BROKER_NS``
(a RedisBroker), ``SIZING_BACKEND`` (the event backend's Redis URL), and
``SIZING_QUEUE``.  One actor, ``noop``.
"""

from __future__ import annotations

import os

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from dramatiq_abort import Abortable, backends

broker = RedisBroker(url=os.environ["SIZING_BROKER"], namespace=os.environ["SIZING_BROKER_NS"])
broker.add_middleware(
    Abortable(backend=backends.RedisBackend.from_url(os.environ["SIZING_BACKEND"]))
)
dramatiq.set_broker(broker)


@dramatiq.actor(queue_name=os.environ["SIZING_QUEUE"], max_retries=0)
def noop() -> None:
    """Do nothing."""
