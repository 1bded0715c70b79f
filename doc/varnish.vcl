#
# Varnish 7 in front of glance-tx: a shared cache for image data.
#
# A template. Replace every placeholder (a name between @ signs) before
# loading it; see doc/caching.rst, "Varnish":
#
#   @BACKEND_HOST@           address of glance-tx (or of the layer in front
#                            of it that authenticates), e.g. 127.0.0.1
#   @BACKEND_PORT@           its port, e.g. 9292
#   @API_NODE@               address of an API node (a host running
#                            twistd glance): the only clients whose PURGE is
#                            obeyed. Repeat the line for every node.
#   @RANGE_PREFETCH_LIMIT@   bytes, e.g. 67108864 (64 MiB): a ranged request
#                            that misses and starts before this offset makes
#                            Varnish fetch and store the whole image; one
#                            starting further in goes straight to glance-tx
#                            and stores nothing.
#
# Run it with storage sized for the images (the largest image must fit, and
# a few of them should), and a send_timeout long enough for a slow client to
# read the largest image (send_timeout bounds a whole response):
#
#   varnishd -a :6081 -f /etc/varnish/glance.vcl \
#       -s malloc,16G            # or: -s file,/var/cache/varnish/glance.bin,500G
#       -p send_timeout=86400
#
# What this configuration does, in short:
#
#  - Only responses that glance-tx marks "Cache-Control: public" (public and
#    community images) with status 200 are stored. Everything else -- private
#    and shared images, errors, 204s for images without data -- is never
#    stored and is always asked of glance-tx, which decides per request who
#    may read what. So a cache key never needs to hold the caller's identity,
#    and no project's private image can be served to another project.
#  - The cache key is the URL alone (no Host): glance-tx answers the same
#    whatever the Host header, and the PURGE that glance-tx sends names only
#    the path, with the proxy's own address as Host.
#  - PURGE is obeyed only from the API nodes (acl api_nodes).
#  - Bodies are streamed both ways: an image is delivered to the first client
#    as it arrives from glance-tx, and an upload passes straight through.
#  - Freshness is glance-tx's (max-age/s-maxage); no stale object is served
#    unless glance-tx allows it (stale-while-revalidate). Expired objects are
#    kept for a week so Varnish can revalidate them (If-None-Match, answered
#    304) instead of fetching a whole image again.
#  - Ranges are served from a stored image (206). A ranged request that
#    misses fetches the whole image once (if it starts early, see
#    @RANGE_PREFETCH_LIMIT@) or is passed to glance-tx as it is.
#

vcl 4.1;

import std;

backend glance {
    .host = "@BACKEND_HOST@";
    .port = "@BACKEND_PORT@";
    .connect_timeout = 5s;
    # A remote store (S3, Swift, HTTP) may take a while for the first byte.
    .first_byte_timeout = 300s;
    .between_bytes_timeout = 120s;
    # With several API nodes, declare one backend each with a probe on
    # /healthcheck and put them in a directors.round_robin() in vcl_init.
}

# The API nodes: only they may PURGE. One line per node.
acl api_nodes {
    "@API_NODE@";
}

sub vcl_recv {
    if (req.method == "PURGE") {
        if (client.ip !~ api_nodes) {
            return (synth(403, "PURGE is not allowed from this address"));
        }
        # Drops every object (all variants) stored under this URL.
        return (purge);
    }
    if (req.method != "GET" && req.method != "HEAD") {
        # Uploads, updates and deletes go straight through, the request
        # body streamed as it arrives.
        return (pass);
    }
    if (req.method == "HEAD") {
        # A v1 HEAD is the image's metadata, which changes: always ask
        # glance-tx (a HEAD costs it no data read). It also keeps Varnish
        # from turning a HEAD miss into a GET of the whole image.
        return (pass);
    }
    if (req.http.If-Match || req.http.If-Unmodified-Since) {
        # Varnish evaluates neither (a hit would ignore them, a miss drops
        # If-Match): glance-tx answers, 412 when they fail.
        return (pass);
    }
    if (req.http.Range ~ ",") {
        # Several ranges: glance-tx answers multipart/byteranges, which
        # Varnish can neither build from a stored object nor pass on (7.1
        # fails a fetch whose 206 is not for a single range). Piped: the
        # bytes go through untouched, and the connection closes after.
        return (pipe);
    }
    # Do not fall through to the builtin vcl_recv: it would pass every
    # request carrying an Authorization header. Identity does not decide
    # what is stored here (only "public" answers are), glance-tx does.
    return (hash);
}

sub vcl_pipe {
    # One request per piped connection: what follows it on the client's
    # connection is not piped to glance-tx unseen.
    set bereq.http.Connection = "close";
    return (pipe);
}

sub vcl_hash {
    # The URL alone: see the header comment.
    hash_data(req.url);
    return (lookup);
}

sub vcl_miss {
    if (req.http.If-None-Match || req.http.If-Modified-Since) {
        # The client has the data already: let glance-tx answer 304 rather
        # than fetch the whole image to compare validators here.
        return (pass);
    }
    if (req.http.Range) {
        # Varnish fetches the whole image on a miss and serves the range out
        # of it as it streams in. Worth it only when the range starts early;
        # a suffix range (bytes=-N), a huge offset or anything unusual goes
        # to glance-tx as it is.
        if (req.http.Range !~ "^\s*bytes\s*=\s*\d{1,15}\s*-\s*\d*\s*$") {
            return (pass);
        }
        if (std.integer(regsub(req.http.Range, "^\s*bytes\s*=\s*(\d+).*$", "\1"), 0)
            > @RANGE_PREFETCH_LIMIT@) {
            return (pass);
        }
    }
    return (fetch);
}

sub vcl_backend_response {
    # Deliver while fetching: the first client does not wait for the whole
    # image, and the store holds an object while it is still arriving.
    set beresp.do_stream = true;

    if (bereq.uncacheable) {
        # A pass (uploads, HEAD, conditional or far-ranged misses): streamed
        # through. Varnish 7.2 and later can hold at most this much ahead of
        # a slow client instead of whatever glance-tx has sent (Varnish 7.1,
        # Debian 12's, cannot: bound its Transient storage, see the guide):
        # set beresp.transit_buffer = 4MB;
        return (deliver);
    }

    if (beresp.status >= 400) {
        # Errors are glance-tx's answer to one caller (a 404 for a project
        # that may not see an image, a 401 without a token): never stored,
        # and they leave no trace that would change how the URL is served
        # to the next caller (a stored image stays stored).
        set beresp.uncacheable = true;
        set beresp.ttl = 0s;
        return (deliver);
    }

    if (beresp.status != 200
        || beresp.http.Cache-Control !~ "(?i)(^|[\s,])public(\s*($|,))"
        || beresp.http.Cache-Control ~ "(?i)(^|[\s,])(private|no-store)(\s*($|[,=]))"
        || beresp.http.Set-Cookie
        || beresp.http.Vary == "*") {
        # Not marked for shared caches by glance-tx: private and shared
        # images, images without data (204). Never stored. For a short
        # while the URL is known as such ("hit-for-miss"): its requests go
        # to glance-tx at once instead of queueing behind one another, and
        # a later answer that is public is stored as usual.
        set beresp.uncacheable = true;
        set beresp.ttl = 10s;
        # Varnish 7.2 and later, as above:
        # set beresp.transit_buffer = 4MB;
        return (deliver);
    }

    # Stored. Varnish took the time to live from s-maxage or max-age.
    if (beresp.http.Cache-Control ~ "(?i)(^|[\s,])no-cache(\s*($|,))") {
        # Stored, but revalidated with glance-tx at every use (v1 image
        # URLs, whose headers carry the metadata). Not 0s: Varnish never
        # revalidates an object whose ttl was 0.
        set beresp.ttl = 1ms;
    }
    if (beresp.http.Cache-Control !~ "(?i)stale-while-revalidate") {
        # No stale answers unless glance-tx allows them.
        set beresp.grace = 0s;
    }
    # Keep expired objects for conditional revalidation: a 304 from glance-tx
    # refreshes a stored image without sending it again.
    set beresp.keep = 7d;
    return (deliver);
}

sub vcl_deliver {
    # A change made through this cache (DELETE, PATCH, PUT, deactivate, ...)
    # drops what is stored for the image at once, before the client hears
    # of the success; glance-tx's PURGE covers changes made elsewhere.
    if (req.method != "GET" && req.method != "HEAD" && req.method != "PURGE"
        && resp.status < 400
        && req.url ~ "^(/v[12])?/images/[0-9a-fA-F-]{1,64}(/|\?|$)") {
        if (!std.ban("req.url ~ ^(/v[12])?/images/"
                + regsub(req.url, "^(?:/v[12])?/images/([0-9a-fA-F-]+).*$", "\1")
                + "(/file)?(\?|$)")) {
            std.log("glance ban failed: " + std.ban_error());
        }
    }
    if (req.http.Range) {
        # Content-MD5 describes the whole image, not the part a range gets
        # (Varnish cuts the part after this; resp.status is still 200 here).
        unset resp.http.Content-MD5;
    }
    # Where the answer came from, for people and tests.
    if (obj.uncacheable) {
        set resp.http.X-Cache = "PASS";
    } elsif (obj.hits > 0) {
        set resp.http.X-Cache = "HIT";
    } else {
        set resp.http.X-Cache = "MISS";
    }
}
