"""Redis URLs to redis-py clients: one server, a Redis Cluster, a Sentinel-managed primary.

Three forms, all with client options in the query string
(``?socket_timeout=5``):

- ``redis://``, ``rediss://`` and ``unix://``: one server, redis-py's own
  URLs.  With ``cluster=True`` a ``redis://`` or ``rediss://`` URL names one
  node of a Redis Cluster instead.
- ``redis+cluster://[[user]:password@]host:port[,host:port...]``: a Redis
  Cluster, found from the nodes named (one answering is enough).
- ``redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/service[/db]``:
  the primary that the Sentinels at those addresses (port 26379 by
  default) name for ``service``.  The user and password are the primary's;
  ``sentinel_username`` and ``sentinel_password`` in the query string are
  the Sentinels' own, if they ask for one.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

import redis
import redis.cluster
import redis.sentinel

__all__ = ["client_from_url", "shown"]

#: Client options set unless the caller does: finite timeouts, and a health
#: check of connections idle for 30 s.
URL_DEFAULTS: dict[str, Any] = {
    "socket_connect_timeout": 5,
    "socket_timeout": 10,
    "health_check_interval": 30,
}
_SENTINEL_PORT = 26379
_EXPECTED = (
    "a Redis URL such as 'redis://localhost:6379/0', "
    "'redis+cluster://host:7000,host:7001' or 'redis+sentinel://host:26379/mymaster/0'"
)


def shown(url: str) -> str:
    """The URL without its password, to name it in errors."""
    head, sep, query = url.partition("?")
    head = re.sub(r"(?<=://)[^/]*@", "***@", head, count=1)
    query = re.sub(
        r"((?:^|&)(?:sentinel_|ssl_)?password=)[^&]*", r"\1***", query, flags=re.IGNORECASE
    )
    return head + sep + query


def _bad(url: str, why: str) -> ValueError:
    return ValueError(f"url must be {_EXPECTED}, not {shown(url)!r}: {why}")


def _hosts(url: str, netloc: str, default_port: int | None) -> tuple[str, list[tuple[str, int]]]:
    """Split ``[userinfo@]host[:port],host[:port]...`` into the userinfo and the addresses."""
    userinfo, _, hostlist = netloc.rpartition("@")
    addresses = []
    for item in hostlist.split(","):
        bracketed = re.fullmatch(r"\[([^\]]*)\](?::(.*))?", item.strip())
        if bracketed:  # an IPv6 address: [::1] or [::1]:26379
            host, port = bracketed[1], bracketed[2]
            colon = "" if port is None else ":"
            port = port or ""
        elif item.count(":") > 1:
            msg = f"put the IPv6 address of {item!r} in brackets, such as [::1]:26379"
            raise _bad(url, msg)
        else:
            host, colon, port = item.strip().partition(":")
        if not host:
            raise _bad(url, f"the address {item!r} names no host")
        if not colon:
            if default_port is None:
                raise _bad(url, f"the address {item!r} needs a port, such as {item}:7000")
            addresses.append((host, default_port))
            continue
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise _bad(url, f"the port of {item!r} is not a port number")
        addresses.append((host, int(port)))
    return userinfo, addresses


def _options(url: str, query: str, *, db: str = "0") -> dict[str, Any]:
    """The client options in a query string, typed the way redis-py types them."""
    parsed: dict[str, Any] = redis.connection.parse_url(f"redis://localhost/{db}?{query}")
    for key in ("host", "port"):
        parsed.pop(key, None)
    # Build (without connecting) a connection, so an option redis-py does not
    # know fails here, not at first use.
    redis.connection.Connection(**parsed)
    return parsed


def _credentials(userinfo: str) -> dict[str, Any]:
    if not userinfo:
        return {}
    user, colon, password = userinfo.partition(":")
    credentials: dict[str, Any] = {}
    if user:
        credentials["username"] = unquote(user)
    if colon:
        credentials["password"] = unquote(password)
    return credentials


def _cluster_options(url: str, query: str) -> dict[str, Any]:
    """Our defaults and the query's options, refusing those ``RedisCluster`` would drop."""
    given = _options(url, query)
    given.pop("db", None)
    allowed = set(getattr(redis.cluster, "REDIS_ALLOWED_KEYS", given))
    ignored = sorted(set(given) - allowed)
    if ignored:
        msg = f"redis-py's RedisCluster ignores the option(s) {', '.join(ignored)}: drop them"
        raise _bad(url, msg)
    defaults = {key: value for key, value in URL_DEFAULTS.items() if key in allowed}
    return {**defaults, **given}


def _cluster_client(url: str) -> Any:
    parts = urlsplit(url)
    if parts.path.strip("/"):
        msg = "a Redis Cluster has database 0 only: drop the path after the addresses"
        raise _bad(url, msg)
    userinfo, addresses = _hosts(url, parts.netloc, None)
    options = _cluster_options(url, parts.query)
    nodes = [redis.cluster.ClusterNode(host, port) for host, port in addresses]
    return redis.cluster.RedisCluster(startup_nodes=nodes, **_credentials(userinfo), **options)


def _sentinel_client(url: str) -> Any:
    parts = urlsplit(url)
    path = [unquote(part) for part in parts.path.split("/") if part]
    if not 1 <= len(path) <= 2 or (len(path) == 2 and not path[1].isdigit()):
        raise _bad(
            url, "after the addresses comes the service name, then the database: /mymaster/0"
        )
    userinfo, addresses = _hosts(url, parts.netloc, _SENTINEL_PORT)
    query = parse_qsl(parts.query, keep_blank_values=True)
    sentinel_auth = {
        key.removeprefix("sentinel_"): value
        for key, value in query
        if key in ("sentinel_username", "sentinel_password")
    }
    rest = urlencode([(key, value) for key, value in query if not key.startswith("sentinel_")])
    options = {**URL_DEFAULTS, **_options(url, rest, db=path[1] if len(path) == 2 else "0")}
    # The Sentinels get the primary's timeouts, from the query string or ours.
    timeouts = {key: options[key] for key in ("socket_connect_timeout", "socket_timeout")}
    sentinels = redis.sentinel.Sentinel(
        addresses, sentinel_kwargs={**timeouts, **sentinel_auth}, **options
    )
    return sentinels.master_for(path[0], **_credentials(userinfo))


def client_from_url(url: str, *, cluster: bool = False) -> Any:
    """A redis-py client for ``url``; see the module's docstring for the forms.

    Raises:
        TypeError: ``url`` is not a string.
        ValueError: ``url`` is malformed, or has an option redis-py does not
            know (the password is masked in the message).
        redis.ConnectionError: a cluster URL, and no node named answers as
            a cluster node: a ``RedisCluster`` asks for the cluster's layout
            when it is made.
    """
    if not isinstance(url, str):
        raise TypeError(f"url must be {_EXPECTED}, not {url!r}")
    scheme, sep, _ = url.partition("://")
    scheme = scheme.lower()
    if not sep:
        raise _bad(url, "it has no scheme")
    try:
        url.encode("utf-8")
        if scheme in ("rediss+cluster", "rediss+sentinel"):
            msg = (
                "TLS with a cluster or Sentinels: pass client= a redis-py client made "
                "with ssl=True, or use a rediss:// URL with cluster=True"
            )
            raise _bad(url, msg)
        if scheme == "redis+sentinel":
            if cluster:
                raise _bad(url, "cluster=True cannot be used with a Sentinel URL")
            return _sentinel_client(url)
        if scheme == "redis+cluster":
            return _cluster_client(url)
        if cluster:
            if scheme not in ("redis", "rediss"):
                raise _bad(url, "cluster=True takes a redis:// or rediss:// URL of one node")
            if urlsplit(url).path.strip("/") not in ("", "0") or re.search(
                r"(?:^|&)db=(?!0(?:&|$))", urlsplit(url).query
            ):
                raise _bad(url, "a Redis Cluster has database 0 only")
            options = _cluster_options(url, urlsplit(url).query)
            return redis.cluster.RedisCluster.from_url(url.partition("?")[0], **options)
        client = redis.Redis.from_url(url, **URL_DEFAULTS)
        # Build (without connecting) one connection, so an option in the
        # query string that redis-py does not know fails here, not at first use.
        pool = client.connection_pool
        pool.connection_class(**pool.connection_kwargs)
        return client
    except (TypeError, ValueError, UnicodeEncodeError) as exc:
        if isinstance(exc, ValueError) and str(exc).startswith("url must be"):
            raise
        raise _bad(url, str(exc)) from exc
    except redis.exceptions.RedisClusterException as exc:
        # Raised as the client is made: it asks a node for the cluster's layout.
        msg = (
            f"could not learn the layout of the Redis Cluster at {shown(url)!r}: {exc} "
            f"(check the addresses, and that the nodes run with cluster-enabled yes)"
        )
        raise redis.exceptions.ConnectionError(msg) from exc
