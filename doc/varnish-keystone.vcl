#
# Varnish 7 in front of glance-tx with auth_strategy = keystone: the bytes
# come from the cache, but glance-tx says yes or no to every caller.
#
# Load this file, not varnish.vcl; it includes varnish.vcl (rendered, with
# its placeholders filled in, in the same directory) and adds to it. No
# placeholders of its own. See doc/caching.rst, "Caches in front of
# Keystone".
#
# With keystone, glance-tx marks image data and metadata
# "Cache-Control: public, no-cache, must-revalidate": stored, never used
# without asking. varnish.vcl already stores such an object with a ttl of
# 1 ms and keeps it (beresp.keep = 7d), so the next request is a miss whose
# backend fetch is conditional (If-None-Match / If-Modified-Since from the
# stored object) and carries the caller's own request headers, X-Auth-Token
# among them. glance-tx answers 304 with no body when that caller may read
# the image -- Varnish then sends the stored bytes -- and 401 (no or a bad
# token) or 404 (an image the caller may not see) otherwise, which Varnish
# passes on and does not store (a 401 leaves the stored image in place).
#
# What this file adds closes the two ways a request could get a stored
# object without its own fetch:
#
#  - vcl_hit: a hit (an object within its 1 ms, or one glance-tx gave a
#    max-age) is passed to glance-tx with the caller's token, never
#    delivered from the cache unasked.
#  - req.hash_ignore_busy: a request does not wait for another caller's
#    fetch in flight and take its object (Varnish's request coalescing);
#    it makes its own (conditional when an older copy is kept). Concurrent
#    first downloads of an image fetch it more than once.
#
# The cache key stays the URL alone: never hash on X-Auth-Token (tokens
# rotate, and one copy per token would defeat the cache).
#
#  - vcl_backend_response/vcl_backend_error: a 401 or 404 answered to a
#    revalidation goes to the caller as a synthetic error with the same
#    status and WWW-Authenticate, so the stored object survives it.
#
# Each 304 makes Varnish copy the stored object into a fresh one (its
# conditional fetch), memory work on the cache host, no data from glance-tx.
#

vcl 4.1;

import std;

sub vcl_recv {
    # Subroutines of the same name run in order: these lines run first,
    # then varnish.vcl's vcl_recv decides.
    set req.hash_ignore_busy = true;
}

sub vcl_hit {
    return (pass);
}

sub vcl_backend_response {
    if (!bereq.uncacheable && beresp.status >= 400
        && (bereq.http.If-None-Match || bereq.http.If-Modified-Since)) {
        # A refusal (401, 404) of a revalidation: varnish.vcl would deliver
        # it uncacheable, and Varnish drops the stored object at the end of
        # any completed fetch; one caller without a token would cost the
        # next reader a whole fetch. A backend error answers the caller the
        # same (vcl_backend_error below) and leaves the stored object be.
        set bereq.http.X-Glance-Status = beresp.status;
        set bereq.http.X-Glance-Reason = beresp.reason;
        set bereq.http.X-Glance-Authenticate = beresp.http.WWW-Authenticate;
        return (error(beresp.status, beresp.reason));
    }
}

sub vcl_backend_error {
    if (bereq.http.X-Glance-Status) {
        set beresp.status = std.integer(bereq.http.X-Glance-Status, 503);
        set beresp.reason = bereq.http.X-Glance-Reason;
        if (bereq.http.X-Glance-Authenticate) {
            set beresp.http.WWW-Authenticate = bereq.http.X-Glance-Authenticate;
        }
        set beresp.http.Content-Type = "application/json";
        set beresp.http.Cache-Control = "no-store";
        set beresp.ttl = 0s;
        set beresp.grace = 0s;
        set beresp.keep = 0s;
        set beresp.uncacheable = true;
        synthetic({"{"error": {"code": "} + beresp.status + {", "title": ""}
            + beresp.reason + {"", "message": "refused by glance-tx""} + "}}");
        return (deliver);
    }
}

include "./varnish.vcl";
