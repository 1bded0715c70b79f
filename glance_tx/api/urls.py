"""
The URL clients reached this site at, for the links and Location headers
the API sends.

C{str(request.URLPath().click(b"/"))} gives the same string, but parses
it with hyperlink (and IDNA) on every request: over half of a
C{/versions} request's CPU. L{site_url} builds it the way twisted.web's
own C{prePathURL} does, from the same parts.
"""

from __future__ import annotations

from twisted.web.iweb import IRequest


def site_url(request: IRequest) -> str:
    """
    C{http[s]://HOST[:PORT]}, without a trailing slash: the Host header's
    name and the port this server listens on (omitted when it is the
    scheme's default), as C{request.prePathURL()} has them, written as
    C{URLPath} writes them.
    """
    secure = request.isSecure()
    port = request.getHost().port  # type: ignore[attr-defined]
    hostport = "" if port == (443 if secure else 80) else f":{port}"
    # As hyperlink renders it: a lower-case name, an IPv6 address in brackets
    # (twisted.web takes them off the Host header).
    host = request.getRequestHostname().decode("ascii").lower()
    if ":" in host:
        host = f"[{host}]"
    return f"http{'s' if secure else ''}://{host}{hostport}"
