"""Who may talk to the policy server: Host and Origin checks and an optional shared token.

The threat model (docs/serving.md): the server drives a robot, so a request from a web page the
robot's operator happens to have open (cross-site POST, DNS rebinding) or from another machine on
the robot's network must not reset or fill sessions. Robot clients (requests, httpx, json_numpy)
send no ``Origin`` header and name the server by the address they connect to; browsers always send
``Origin`` with a POST and name the page's host in ``Host``. So:

* ``Host`` must name an allowed host (default: loopback names only — ``localhost``, ``127.x.x.x``,
  ``[::1]``, any port). A DNS-rebound page reaches 127.0.0.1 under its own name and is refused.
* state-changing requests (POST) carrying an ``Origin`` header are refused unless the origin is
  allowed explicitly (default: none).
* with a token, every request must carry ``Authorization: Bearer <token>`` (compared in constant
  time); ``vla-adp serve`` refuses a non-loopback bind without one unless told ``--allow-remote``.

Pure functions over (method, headers): the HTTP app and any other transport reuse them.
"""

from __future__ import annotations

import hmac
import ipaddress
from dataclasses import dataclass

from vla_adp.serve.validate import RequestError

LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
ANY = "*"
TOKEN_ENV = "VLA_ADP_TOKEN"


def is_loopback(host: str) -> bool:
    """``localhost`` or a loopback IP (127.0.0.0/8, ::1)."""
    host = host.strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_name(header: str) -> str:
    """The host part of a ``Host`` header (``name``, ``name:port``, ``[v6]``, ``[v6]:port``)."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


@dataclass(frozen=True)
class AccessPolicy:
    """What a request must show to be served.

    Args:
        hosts: allowed ``Host`` names (port ignored); loopback names match any loopback address;
            ``("*",)`` allows every host (a server on a robot network, protected by ``token``).
        origins: allowed ``Origin`` values for POST requests (e.g. ``"http://localhost:3000"``);
            default none: a POST with an ``Origin`` header comes from a browser page.
        token: shared secret every request must carry as ``Authorization: Bearer <token>``; ``None`` = off.
    """

    hosts: tuple[str, ...] = LOOPBACK_HOSTS
    origins: tuple[str, ...] = ()
    token: str | None = None

    def __post_init__(self) -> None:
        if not self.hosts:
            raise ValueError("AccessPolicy.hosts is empty: no request could be served (use ('*',) for any host)")
        if self.token is not None and (len(self.token) < 8 or not self.token.isprintable() or " " in self.token):
            raise ValueError(f"the token must be at least 8 printable characters without spaces, got {len(self.token)} "
                             "character(s)")

    def check(self, method: str, headers) -> None:
        """Raise :class:`RequestError` (400/401/403) unless ``headers`` (a case-insensitive mapping) may be served."""
        host = headers.get("host")
        if host is None:
            raise RequestError(400, "the request has no Host header", "an HTTP/1.1 request with a Host header")
        if not self.host_allowed(host):
            raise RequestError(403, f"Host {host[:100]!r} is not served here (a DNS-rebinding page, or a name the "
                               "server was not told about)", f"one of {list(self.hosts)} (vla-adp serve --allowed-host)")
        origin = headers.get("origin")
        if method not in ("GET", "HEAD", "OPTIONS") and origin is not None and origin not in self.origins:
            raise RequestError(403, f"cross-origin request from Origin {origin[:100]!r} refused (a web page may not "
                               "drive the robot)", "a robot client sending no Origin header, or an origin allowed "
                               "with vla-adp serve --allow-origin")
        if self.token is not None:
            given = headers.get("authorization", "")
            scheme, _, value = given.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), self.token.encode()):
                raise RequestError(401, "missing or wrong token" if given else "this server requires a token",
                                   f"an 'Authorization: Bearer <token>' header (the token given to vla-adp serve "
                                   f"--token or ${TOKEN_ENV})")

    def host_allowed(self, header: str) -> bool:
        if ANY in self.hosts:
            return True
        name = host_name(header)
        if is_loopback(name):
            return any(is_loopback(h) for h in self.hosts)
        return name in {h.lower().strip("[]") for h in self.hosts}


def check_bind(host: str, token: str | None, allow_remote: bool) -> None:
    """Refuse a non-loopback bind without a token unless ``allow_remote`` says so explicitly."""
    if not is_loopback(host) and token is None and not allow_remote:
        raise ValueError(f"--host {host} would accept connections from other machines without authentication; "
                         f"give a shared token (--token, or the {TOKEN_ENV} environment variable; clients send it as "
                         "'Authorization: Bearer <token>'), or pass --allow-remote to serve without one (only on a "
                         "trusted network), or keep the default 127.0.0.1")
