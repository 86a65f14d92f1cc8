"""Run pytest under gevent's monkey-patching, the way ``dramatiq-gevent`` runs a worker.

``nox -s gevent`` runs the test suite with it: gevent patches the standard
library before anything else is imported, so every worker "thread" the
tests start is a greenlet, and every wait in them is cooperative.
Arguments are pytest's.
"""

from gevent import monkey

monkey.patch_all()

import sys  # noqa: E402

import pytest  # noqa: E402

if __name__ == "__main__":
    sys.exit(pytest.main(sys.argv[1:]))
