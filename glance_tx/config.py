"""
Configuration: one INI file (Glance's option names where Glance has one),
overridden by ``twistd`` options, resolved into frozen attrs values.

Every option has a default that works out of the box: SQLite and the
filesystem store under the data directory, listening on loopback.
"""

from __future__ import annotations

import configparser
import hashlib
import os
import socket
from collections.abc import Mapping
from typing import Any

import attrs
from attrs import field, frozen

from glance_tx import images
from glance_tx.keystone_auth import PasswordCredentials

DEFAULT_DATA_DIR = "glance-data"
DEFAULT_BIND_HOST = "127.0.0.1"
DEFAULT_BIND_PORT = 9292
DEFAULT_HASHING_ALGORITHM = "sha512"
ONE_TIB = 1 << 40
#: How long glance-registry keeps an API node's idle connection open: above
#: every node's C{registry_client_pool_unused_timeout}.
REGISTRY_KEEPALIVE_SECONDS = 300.0
#: Seconds a health check's probe answers for, from its start
#: (C{healthcheck_probe_interval}). A load balancer polls every few seconds;
#: one probe a second costs nothing at any request rate.
HEALTHCHECK_PROBE_INTERVAL = 1.0


class ConfigError(ValueError):
    """The configuration cannot be used; the message says which option."""


@frozen
class StoreConfig:
    """
    One enabled store: its id (the INI section name), type and options, as
    written; the store's factory (L{glance_tx.store.backends}) checks them
    and supplies defaults.
    """

    id: str
    type: str
    options: Mapping[str, str] = field(factory=dict)


@frozen
class CacheConfig:
    """
    How responses are marked for caching proxies, and which proxies to
    purge when an image goes away or becomes less visible.
    """

    #: max-age for public and community image data (never changes once
    #: active, so long is safe; purging handles deletion).
    public_max_age: int = 86400
    #: max-age for image metadata (it changes; 0 means no-cache).
    metadata_max_age: int = 0
    #: Base URLs of the proxies (Varnish, Squid) to send PURGE to.
    purge_urls: tuple[str, ...] = ()
    #: Attempts per PURGE before giving up (with exponential backoff).
    purge_attempts: int = 5
    #: Seconds after a purge to purge again, for the fills that were in
    #: flight (0: no second round).
    purge_repeat_delay: int = 5
    #: Have caches ask glance-tx at every use of stored image data and
    #: metadata (C{public, no-cache, must-revalidate}), so that each caller
    #: is authenticated and authorized by glance-tx even when the bytes come
    #: from the cache. On with C{auth_strategy = keystone}: a shared cache
    #: cannot check a token, glance-tx's 304 or 401/404 does.
    revalidate: bool = False


#: C{[DEFAULT] auth_strategy} values (Glance's option).
AUTH_STRATEGIES = ("noauth", "keystone")


@frozen
class KeystoneConfig:
    """
    C{[keystone_authtoken]}, with keystonemiddleware's option names (so an
    operator's existing Glance file works): where callers get tokens, and
    the service user glance-tx validates them as.
    """

    #: Keystone's v3 API, C{http://keystone:5000} or C{.../v3}.
    auth_url: str
    username: str
    password: str = field(repr=False)
    project_name: str
    #: Sent to callers in C{WWW-Authenticate: Keystone uri="..."}.
    www_authenticate_uri: str
    user_domain_name: str = "Default"
    project_domain_name: str = "Default"
    #: Seconds a validated token is trusted before Keystone is asked again
    #: (never past the token's own expiry).
    token_cache_time: float = 300.0
    #: Seconds one call to Keystone (connecting and answering) may take
    #: before the caller gets a 503.
    http_connect_timeout: float = 5.0
    #: PEM file of the authority that signed an https Keystone's
    #: certificate; None trusts the system's authorities.
    cafile: str | None = None
    #: Do not check an https Keystone's certificate (keystonemiddleware's
    #: option; C{cafile} wins when both are set).
    insecure: bool = False
    #: A client certificate (PEM) to present to an https Keystone that asks
    #: for one, and its key (C{keyfile}, or in C{certfile} too).
    certfile: str | None = None
    keyfile: str | None = None
    #: An C{X-Service-Token} must hold one of these roles to let an
    #: expired user token through (keystonemiddleware's option).
    service_token_roles: frozenset[str] = frozenset({"service"})
    #: Whether a service token without those roles is refused outright
    #: (keystonemiddleware 13's default, true) or only denied
    #: C{allow_expired}.
    service_token_roles_required: bool = True

    @property
    def v3_url(self) -> str:
        """C{auth_url} ending in C{/v3}, as keystonemiddleware accepts both."""
        from glance_tx.keystone_auth import v3_url

        return v3_url(self.auth_url)


@frozen
class ImageQuotas:
    """
    Glance's per-image quotas (its option names and defaults): how many
    members, properties, tags and locations one image may have. A negative
    value is unlimited, as in Glance.
    """

    image_member_quota: int = 128
    image_property_quota: int = 128
    image_tag_quota: int = 128
    image_location_quota: int = 10


def _names(value: Any) -> tuple[str, ...]:
    return tuple(value)


#: The import methods there are, in Glance's default order.
IMPORT_METHOD_NAMES = ("glance-direct", "web-download", "copy-image")


def _import_methods(raw: str | None) -> tuple[str, ...]:
    if raw is None:
        return IMPORT_METHOD_NAMES
    methods = tuple(m.strip() for m in raw.split(",") if m.strip())
    for method in methods:
        if method not in IMPORT_METHOD_NAMES:
            raise ConfigError(
                f"enabled_import_methods: unknown method {method!r}; known are "
                + ", ".join(IMPORT_METHOD_NAMES)
            )
    return methods


@frozen
class ImageFormatConfig:
    """
    What an upload's content must be (Glance's C{[image_format]} options;
    see L{glance_tx.formats.inspection}).
    """

    #: Refuse an upload whose content is not its declared disk_format.
    require_image_format_match: bool = True
    #: The VMDK create types allowed; others (descriptor files naming
    #: extents, such as monolithicFlat) are refused.
    vmdk_allowed_types: tuple[str, ...] = field(
        default=("streamOptimized", "monolithicSparse"), converter=_names
    )
    #: The values an image's disk_format may take (Glance 33's list and
    #: order): the v2 schema's enum, and what v1 and v2 accept.
    disk_formats: tuple[str, ...] = field(
        default=images.DISK_FORMATS, converter=_names
    )
    #: The values an image's container_format may take (Glance 33's).
    container_formats: tuple[str, ...] = field(
        default=images.CONTAINER_FORMATS, converter=_names
    )
    #: Safety checks (by the inspector's name: C{mbr}) whose failure only
    #: logs a warning when the content is a GPT disk: a raw image behind
    #: a loosely written protective MBR. Glance 33's default: none.
    gpt_safety_checks_nonfatal: tuple[str, ...] = field(default=(), converter=_names)


@frozen
class ProjectLimits:
    """
    Per-project limits under the names of Glance's unified limits, the same
    for every project: glance-tx's own C{[project_limits]} section, what
    Glance takes from Keystone's registered limits with
    C{use_keystone_limits}. Sizes in MiB, as Keystone's limits for Glance;
    C{-1} is unlimited (the default).
    """

    image_size_total: int = -1
    image_stage_total: int = -1
    image_count_total: int = -1
    image_count_uploading: int = -1


#: oslo.limit's C{endpoint_interface} values (with glance_store's URL forms).
LIMIT_INTERFACES = ("public", "internal", "admin")


@frozen
class OsloLimitConfig:
    """
    C{[oslo_limit]}, with oslo.limit's option names (read when
    C{use_keystone_limits = true}): how glance-tx logs in to Keystone to
    read unified limits, and which endpoint (so which service and region)
    the limits are registered for: C{endpoint_id}, or the endpoint found
    from C{endpoint_service_type}/C{endpoint_service_name},
    C{endpoint_region_name} and C{endpoint_interface}.
    """

    auth_url: str
    credentials: PasswordCredentials
    endpoint_id: str | None = None
    endpoint_service_type: str | None = None
    endpoint_service_name: str | None = None
    endpoint_region_name: str | None = None
    endpoint_interface: str = "public"
    #: PEM file of the authority of an https Keystone (None: the system's).
    cafile: str | None = None
    #: Do not check Keystone's certificate (oslo.limit's option).
    insecure: bool = False
    #: A client certificate for Keystone, and its key (oslo.limit's options).
    certfile: str | None = None
    keyfile: str | None = None
    #: Seconds one call to Keystone may take (oslo.limit's C{timeout}).
    timeout: float = 5.0
    #: glance-tx's option: seconds the limits read are used before Keystone
    #: is asked again (a changed limit takes effect within this long).
    cache_time: float = 30.0


@frozen
class ClientLimits:
    """
    How long a client may keep this node waiting on it (seconds; None
    waits for ever), and whether a connection is kept between requests
    (L{glance_tx.api.deadlines}). Glance's names where Glance has them
    (C{client_socket_timeout}, C{http_keepalive}); eventlet has no
    deadline on a request's head, so C{client_header_timeout} takes
    nginx's name and default.
    """

    #: A request's head must be complete this long after the connection
    #: opened or its first byte came.
    client_header_timeout: float | None = 60.0
    #: The longest silence of a client while it sends a body, or while it
    #: reads nothing of a response that waits for it.
    client_socket_timeout: float | None = 900.0
    #: Keep connections open between requests (else every response says
    #: C{Connection: close}).
    http_keepalive: bool = True
    #: How long a kept connection may wait for its next request.
    http_keepalive_timeout: float | None = 60.0
    #: The most connections this node serves at once; past it a new one
    #: is answered 503 with Retry-After (None: no limit).
    max_connections: int | None = 1000
    #: At stop, how long requests in flight get to finish before their
    #: connections are aborted (oslo.service's name and default).
    graceful_shutdown_timeout: float | None = 60.0


@frozen
class ImageConversionConfig:
    """
    C{[image_conversion]}: Glance's C{output_format}, and the limits of
    the C{qemu-img convert} that makes it (L{glance_tx.formats.conversion}).
    """

    #: raw, qcow2 or vmdk; None converts nothing.
    output_format: str | None = None
    #: The node-local directory of the work files; None: under data_dir.
    work_dir: str | None = None
    #: Seconds a conversion may take (wall clock and CPU).
    timeout: float = 600.0
    #: Bytes of address space qemu-img may use.
    memory_limit: int = 1 << 30


@frozen
class Config:
    endpoint: str
    data_dir: str
    sql_connection: str
    image_size_cap: int
    stores: tuple[StoreConfig, ...]
    default_backend: str
    default_project: str
    thread_pool_size: int
    #: Threads of the registry's own pool (its database calls), apart from
    #: the C{thread_pool_size} ones that hash, write and read images, so a
    #: metadata call never queues behind bulk work.
    registry_thread_pool_size: int = 8
    #: How much nicer (lower CPU priority) the C{thread_pool_size} threads
    #: run than the reactor and the registry's threads (0: the same).
    thread_pool_nice: int = 10
    #: Reclaim uploads whose node is gone (L{glance_tx.recovery}) before
    #: serving and then periodically; safe with other nodes on the registry
    #: and stores, since only expired leases are reclaimed. Off: never.
    recover_on_start: bool = True
    #: This node's name in upload leases: unique among the nodes sharing a
    #: registry, and the same across restarts (so a restarted node reclaims
    #: its own interrupted uploads at once). By default HOST:PORT.
    node_id: str = "localhost"
    #: Seconds an upload's lease holds without renewal (renewed every
    #: third of that); a node silent for longer is taken for gone.
    upload_lease_seconds: float = 60.0
    cache: CacheConfig = field(factory=CacheConfig)
    image_format: ImageFormatConfig = field(factory=ImageFormatConfig)
    #: The registry server to use instead of the in-process SQL registry
    #: (C{http://host:9191}); None keeps the registry in-process.
    registry_url: str | None = None
    #: The shared secret sent to that registry (and required by
    #: C{glance-registry}, when set in its configuration).
    registry_token: str | None = None
    #: Seconds one registry call may take before it is a 503 (Glance's name;
    #: its default, 600, would hang a node on a dead registry for minutes).
    registry_client_timeout: float = 5.0
    #: How often an idempotent registry call is repeated after a connection
    #: failure.
    registry_client_retries: int = 1
    #: PEM file of the authority that signed an https registry's
    #: certificate (Glance's name); None trusts the system's authorities.
    registry_client_ca_file: str | None = None
    #: How many idle connections to the registry are kept open for the next
    #: calls (keystonemiddleware's C{memcache_pool_maxsize}, for the
    #: registry); more calls at once open more, each closed after its call.
    registry_client_pool_maxsize: int = 8
    #: Seconds an idle pooled connection is kept (keystonemiddleware's
    #: C{memcache_pool_unused_timeout}): below the registry's own keep-alive
    #: (L{REGISTRY_KEEPALIVE_SECONDS}), so the node drops it first and never
    #: sends a call down a connection the registry is closing.
    registry_client_pool_unused_timeout: float = 240.0
    #: Show admins every image's locations in v2, and let them add and
    #: remove locations (Glance's name; off, as there).
    show_multiple_locations: bool = False
    #: Show admins every image's C{direct_url} in v2 (Glance's name).
    show_image_direct_url: bool = False
    #: The longest request line or header line (Glance's name and
    #: default): longer is a 414 or 431 (L{glance_tx.api.channel}).
    max_header_line: int = 16384
    quotas: ImageQuotas = field(factory=ImageQuotas)
    #: Where identity comes from: C{noauth} (the headers, or
    #: C{default_project} as admin) or C{keystone} (a validated token).
    auth_strategy: str = "noauth"
    #: C{[keystone_authtoken]}; set when C{auth_strategy} is keystone.
    keystone: KeystoneConfig | None = None
    #: A delete of an active image leaves it C{pending_delete}, its data
    #: kept until the scrubber removes it (Glance's name; off, as there).
    delayed_delete: bool = False
    #: Seconds an image stays pending delete before the scrubber removes
    #: its data (Glance's name and default).
    scrub_time: int = 0
    #: Seconds between the scrubber's rounds (Glance's glance-scrubber
    #: option, and its default).
    wakeup_time: int = 300
    #: The C{hashlib} algorithm of every upload's C{os_hash_value}, recorded
    #: as its C{os_hash_algo} (Glance's option and default): an operator
    #: whose CPUs hash sha256 in hardware may prefer it.
    hashing_algorithm: str = DEFAULT_HASHING_ALGORITHM
    #: C{[oslo_policy] policy_file}: rules over Glance's defaults (an
    #: operator's Glance C{policy.yaml}); None: the defaults alone.
    policy_file: str | None = None
    #: C{[project_limits]}: each project's limits (see L{ProjectLimits}).
    project_limits: ProjectLimits = field(factory=ProjectLimits)
    #: C{use_keystone_limits = true}: the limits come from Keystone's
    #: unified limits instead, read as C{[oslo_limit]} says.
    keystone_limits: OsloLimitConfig | None = None
    clients: ClientLimits = field(factory=ClientLimits)
    #: The most image-data uploads this node takes at once; past it an
    #: upload is answered 503 with Retry-After (None: no limit).
    max_concurrent_uploads: int | None = 100
    #: The bytes all uploads in flight may hold queued together (waiting
    #: for their hashes or their store), in bytes; None: no budget.
    upload_buffer_budget: int | None = 32 << 20
    #: The interoperable import methods offered (Glance's option and
    #: default; see L{glance_tx.imports}).
    enabled_import_methods: tuple[str, ...] = field(
        default=IMPORT_METHOD_NAMES, converter=_names
    )
    #: C{[import_filtering_opts]}: the HTTP store's options (its address
    #: guard) for reading web-download URLs when no HTTP store is enabled.
    import_filtering: Mapping[str, str] = field(factory=dict)
    image_conversion: ImageConversionConfig = field(factory=ImageConversionConfig)
    #: Where metadata definition files are read from (Glance's
    #: C{glance-manage} option); None: the definitions glance-tx ships.
    metadata_source_path: str | None = None
    #: Load them into the SQL registry at every start (namespaces already
    #: there are left as they are; see L{glance_tx.metadefs.load}).
    load_metadefs: bool = False
    #: C{[task] task_time_to_live}: hours a task stays shown after it has
    #: ended (Glance's option, group and default; its old place in
    #: C{[DEFAULT]} is read too).
    task_time_to_live: int = 48
    #: Seconds a health check's probe of the registry and the stores is
    #: answered again, from its start (glance-tx's option; 0: every health
    #: check waits for a probe of its own, or the one in flight).
    healthcheck_probe_interval: float = HEALTHCHECK_PROBE_INTERVAL

    def store(self, store_id: str) -> StoreConfig:
        for store in self.stores:
            if store.id == store_id:
                return store
        raise ConfigError(f"no enabled backend named {store_id!r}")


def _int(section: Mapping[str, str], name: str, default: int, minimum: int = 0) -> int:
    raw = section.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, not {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}")
    return value


def bool_option(section: Mapping[str, str], name: str, default: bool) -> bool:
    """
    A boolean as configparser spells them: true/false, yes/no, on/off, 1/0
    (the one parser of boolean options, stores' sections included).
    """
    raw = section.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return configparser.ConfigParser.BOOLEAN_STATES[raw.strip().lower()]
    except KeyError:
        raise ConfigError(f"{name} must be true or false, not {raw!r}") from None


def load_config(
    path: str | None = None,
    *,
    endpoint: str | None = None,
    data_dir: str | None = None,
    default_port: int = DEFAULT_BIND_PORT,
) -> Config:
    """
    Read C{path} (if given) and apply command-line overrides.
    C{default_port} is the port without C{bind_port} (9191 for
    C{glance-registry}).

    @raise ConfigError: an unreadable file or an invalid value.
    """
    parser = configparser.ConfigParser(interpolation=None)
    if path is not None:
        try:
            with open(path, encoding="utf-8") as f:
                parser.read_file(f)
        except (OSError, configparser.Error) as e:
            raise ConfigError(f"cannot read config file {path}: {e}") from None
    default = parser.defaults()

    data_dir = os.path.abspath(data_dir or default.get("data_dir") or DEFAULT_DATA_DIR)
    if endpoint is None:
        host = default.get("bind_host", DEFAULT_BIND_HOST)
        port = _int(default, "bind_port", default_port)
        endpoint = _listen_endpoint(host, port, _tls_files(default))

    stores = []
    for entry in default.get("enabled_backends", "file:file").split(","):
        entry = entry.strip()
        if not entry:
            continue
        store_id, sep, store_type = entry.partition(":")
        if not sep or not store_id or not store_type:
            raise ConfigError(f"enabled_backends entry {entry!r} is not id:type")
        # A section also shows [DEFAULT]'s keys; keep only the store's own.
        section = parser[store_id] if parser.has_section(store_id) else {}
        options = {k: v for k, v in section.items() if k not in default}
        stores.append(StoreConfig(id=store_id, type=store_type, options=options))
    if not stores:
        raise ConfigError("enabled_backends names no store")
    default_backend = default.get("default_backend", stores[0].id)
    if default_backend not in {s.id for s in stores}:
        raise ConfigError(f"default_backend {default_backend!r} is not in enabled_backends")

    auth_strategy, keystone = _auth(parser)
    return Config(
        endpoint=endpoint,
        data_dir=data_dir,
        sql_connection=default.get("sql_connection")
        or "sqlite:///" + os.path.join(data_dir, "glance.sqlite"),
        image_size_cap=_int(default, "image_size_cap", ONE_TIB, minimum=1),
        stores=tuple(stores),
        default_backend=default_backend,
        default_project=default.get("default_project", "admin"),
        thread_pool_size=_int(default, "thread_pool_size", 16, minimum=2),
        registry_thread_pool_size=_int(default, "registry_thread_pool_size", 8, minimum=1),
        thread_pool_nice=_int(default, "thread_pool_nice", 10, minimum=0),
        recover_on_start=bool_option(default, "recover_on_start", True),
        node_id=default.get("node_id") or default_node_id(endpoint),
        upload_lease_seconds=_seconds(default, "upload_lease_seconds", 60.0),
        cache=_cache_config(parser, revalidate=auth_strategy == "keystone"),
        image_format=_image_format_config(parser),
        registry_url=_registry_url(default),
        registry_token=default.get("registry_token") or None,
        registry_client_timeout=_seconds(default, "registry_client_timeout", 5.0),
        registry_client_retries=_int(default, "registry_client_retries", 1),
        registry_client_ca_file=default.get("registry_client_ca_file") or None,
        registry_client_pool_maxsize=_int(default, "registry_client_pool_maxsize", 8),
        registry_client_pool_unused_timeout=_pool_unused_timeout(default),
        show_multiple_locations=bool_option(default, "show_multiple_locations", False),
        show_image_direct_url=bool_option(default, "show_image_direct_url", False),
        max_header_line=_int(default, "max_header_line", 16384, minimum=1024),
        quotas=_quotas(default),
        auth_strategy=auth_strategy,
        keystone=keystone,
        delayed_delete=bool_option(default, "delayed_delete", False),
        scrub_time=_int(default, "scrub_time", 0),
        wakeup_time=_int(default, "wakeup_time", 300, minimum=1),
        hashing_algorithm=hashing_algorithm(
            default.get("hashing_algorithm") or DEFAULT_HASHING_ALGORITHM
        ),
        policy_file=_policy_file(parser, path),
        project_limits=_project_limits(parser),
        keystone_limits=_oslo_limit(parser),
        clients=_client_limits(default),
        max_concurrent_uploads=_limit(default, "max_concurrent_uploads", 100),
        upload_buffer_budget=_mebibytes(_limit(default, "upload_buffer_budget", 32)),
        enabled_import_methods=_import_methods(default.get("enabled_import_methods")),
        image_conversion=_image_conversion_config(parser),
        metadata_source_path=default.get("metadata_source_path") or None,
        load_metadefs=bool_option(default, "load_metadefs", False),
        task_time_to_live=_int(
            parser["task"] if parser.has_section("task") else default, "task_time_to_live", 48
        ),
        healthcheck_probe_interval=_seconds_or_zero(
            default, "healthcheck_probe_interval", HEALTHCHECK_PROBE_INTERVAL
        ),
        import_filtering={
            k: v
            for k, v in (
                parser["import_filtering_opts"].items()
                if parser.has_section("import_filtering_opts")
                else ()
            )
            if k not in default
        },
    )


def _project_limits(parser: configparser.ConfigParser) -> ProjectLimits:
    """C{[project_limits]}: the same limits for every project."""
    if not parser.has_section("project_limits"):
        return ProjectLimits()
    section = {k: v for k, v in parser["project_limits"].items() if k not in parser.defaults()}
    unknown = sorted(set(section) - set(attrs.fields_dict(ProjectLimits)))
    if unknown:
        raise ConfigError(f"[project_limits] has no option {', '.join(unknown)}")
    return ProjectLimits(
        **{name: _int(section, name, -1, minimum=-1) for name in attrs.fields_dict(ProjectLimits)}
    )


def _oslo_limit(parser: configparser.ConfigParser) -> OsloLimitConfig | None:
    """
    With C{[DEFAULT] use_keystone_limits = true} (Glance's option), the
    C{[oslo_limit]} section (oslo.limit's names); None without it.
    """
    if not bool_option(parser.defaults(), "use_keystone_limits", False):
        return None
    section: Mapping[str, str] = (
        {k: v for k, v in parser["oslo_limit"].items() if k not in parser.defaults()}
        if parser.has_section("oslo_limit")
        else {}
    )

    def get(name: str) -> str | None:
        return (section.get(name) or "").strip() or None

    missing = [name for name in ("auth_url", "username", "password") if not get(name)]
    if missing:
        raise ConfigError("use_keystone_limits = true needs [oslo_limit] " + ", ".join(missing))
    if not (get("endpoint_id") or get("endpoint_service_type") or get("endpoint_service_name")):
        raise ConfigError(
            "use_keystone_limits = true needs [oslo_limit] endpoint_id, or "
            "endpoint_service_type or endpoint_service_name (the endpoint the "
            "limits are registered for)"
        )
    auth_url = get("auth_url") or ""
    if not auth_url.startswith(("http://", "https://")):
        raise ConfigError(f"[oslo_limit] auth_url {auth_url!r} is not an http(s) URL")
    auth_type = get("auth_type") or "password"
    if auth_type not in ("password", "v3password"):
        raise ConfigError(f"[oslo_limit] auth_type {auth_type!r} is not supported (password)")
    interface = get("endpoint_interface") or "public"
    interface = interface.removesuffix("URL")
    if interface not in LIMIT_INTERFACES:
        raise ConfigError(
            f"[oslo_limit] endpoint_interface must be one of {', '.join(LIMIT_INTERFACES)}, "
            f"not {interface!r}"
        )
    system_scope = get("system_scope")
    if system_scope not in (None, "all"):
        raise ConfigError(f"[oslo_limit] system_scope must be all, not {system_scope!r}")
    defaults = OsloLimitConfig("", PasswordCredentials())
    return OsloLimitConfig(
        auth_url=auth_url,
        credentials=PasswordCredentials(
            user=get("username"),
            password=section.get("password"),
            project=get("project_name"),
            user_domain_id=get("user_domain_id") or "default",
            user_domain_name=get("user_domain_name"),
            project_domain_id=get("project_domain_id") or "default",
            project_domain_name=get("project_domain_name"),
            system_scope=system_scope,
        ),
        endpoint_id=get("endpoint_id"),
        endpoint_service_type=get("endpoint_service_type"),
        endpoint_service_name=get("endpoint_service_name"),
        endpoint_region_name=get("endpoint_region_name"),
        endpoint_interface=interface,
        cafile=get("cafile"),
        insecure=bool_option(section, "insecure", False),
        certfile=get("certfile"),
        keyfile=get("keyfile"),
        timeout=_seconds(section, "timeout", defaults.timeout),
        cache_time=_seconds(section, "cache_time", defaults.cache_time),
    )


def _policy_file(parser: configparser.ConfigParser, path: str | None) -> str | None:
    """
    C{[oslo_policy] policy_file}, relative to the configuration file's
    directory, as oslo.config finds it. Unset: C{policy.yaml} beside the
    configuration file when there is one (Glance's default name), else
    none. A named file that is missing is an error, not the defaults.
    """
    config_dir = os.path.dirname(os.path.abspath(path)) if path is not None else os.getcwd()
    name = parser.get("oslo_policy", "policy_file", fallback=None)
    if name is None or not name.strip():
        beside = os.path.join(config_dir, "policy.yaml")
        return beside if path is not None and os.path.isfile(beside) else None
    policy_file = os.path.join(config_dir, name.strip())
    if not os.path.isfile(policy_file):
        raise ConfigError(f"[oslo_policy] policy_file {policy_file} does not exist")
    return policy_file


def _client_limits(section: Mapping[str, str]) -> ClientLimits:
    """The timeouts of [DEFAULT]; see L{ClientLimits}."""
    defaults = ClientLimits()
    timeouts = {
        name: _timeout(section, name, getattr(defaults, name))
        for name in (
            "client_header_timeout",
            "client_socket_timeout",
            "http_keepalive_timeout",
            "graceful_shutdown_timeout",
        )
    }
    return ClientLimits(
        http_keepalive=bool_option(section, "http_keepalive", defaults.http_keepalive),
        max_connections=_limit(section, "max_connections", defaults.max_connections),
        **timeouts,
    )


def _limit(section: Mapping[str, str], name: str, default: int | None) -> int | None:
    """A count at least 1, where C{0} means no limit: None."""
    value = _int(section, name, -1)
    if value == -1:
        return default
    return value or None


def _mebibytes(value: int | None) -> int | None:
    """A size given in MiB, in bytes (None stays None)."""
    return None if value is None else value << 20


def _timeout(section: Mapping[str, str], name: str, default: float | None) -> float | None:
    """Seconds, where C{0} (as in Glance) means no timeout: None."""
    raw = (section.get(name) or "").strip()
    if not raw:
        return default
    try:
        if float(raw) == 0:
            return None
    except ValueError:
        pass  # _seconds says what is wrong
    return _seconds(section, name, 0.0)


def _auth(parser: configparser.ConfigParser) -> tuple[str, KeystoneConfig | None]:
    """C{auth_strategy} and, for keystone, C{[keystone_authtoken]}."""
    strategy = (parser.defaults().get("auth_strategy") or "noauth").strip().lower()
    if strategy not in AUTH_STRATEGIES:
        raise ConfigError(
            f"auth_strategy must be one of {', '.join(AUTH_STRATEGIES)}, not {strategy!r}"
        )
    if strategy != "keystone":
        return strategy, None
    section: Mapping[str, str] = (
        {k: v for k, v in parser["keystone_authtoken"].items() if k not in parser.defaults()}
        if parser.has_section("keystone_authtoken")
        else {}
    )
    missing = [
        name
        for name in ("auth_url", "username", "password", "project_name")
        if not (section.get(name) or "").strip()
    ]
    if missing:
        raise ConfigError(
            "auth_strategy = keystone needs [keystone_authtoken] " + ", ".join(missing)
        )
    auth_type = (section.get("auth_type") or "password").strip()
    if auth_type not in ("password", "v3password"):
        raise ConfigError(f"[keystone_authtoken] auth_type {auth_type!r} is not supported (password)")
    auth_url = section["auth_url"].strip()
    if not auth_url.startswith(("http://", "https://")):
        raise ConfigError(f"[keystone_authtoken] auth_url {auth_url!r} is not an http(s) URL")
    defaults = KeystoneConfig("", "", "", "", "")
    cache_time = section.get("token_cache_time")
    keystone = KeystoneConfig(
        auth_url=auth_url,
        username=section["username"].strip(),
        password=section["password"],
        project_name=section["project_name"].strip(),
        www_authenticate_uri=(
            section.get("www_authenticate_uri") or section.get("auth_uri") or auth_url
        ).strip(),
        user_domain_name=(section.get("user_domain_name") or defaults.user_domain_name).strip(),
        project_domain_name=(
            section.get("project_domain_name") or defaults.project_domain_name
        ).strip(),
        # keystonemiddleware: -1 disables the cache; 0 here does the same.
        token_cache_time=0.0
        if cache_time is not None and cache_time.strip() == "-1"
        else float(_int(section, "token_cache_time", int(defaults.token_cache_time))),
        http_connect_timeout=_seconds(
            section, "http_connect_timeout", defaults.http_connect_timeout
        ),
        cafile=(section.get("cafile") or "").strip() or None,
        insecure=bool_option(section, "insecure", False),
        certfile=(section.get("certfile") or "").strip() or None,
        keyfile=(section.get("keyfile") or "").strip() or None,
        service_token_roles=frozenset(
            r.strip().lower()
            for r in section.get("service_token_roles", "service").split(",")
            if r.strip()
        ),
        service_token_roles_required=bool_option(section, "service_token_roles_required", True),
    )
    return strategy, keystone


def hashing_algorithm(name: str) -> str:
    """
    C{name} as C{hashlib} spells it, checked to be an algorithm this
    Python can run with a fixed-size digest (the shake functions need a
    length that C{os_hash_value} has no room for).

    @raise ConfigError: an unknown or variable-length algorithm.
    """
    name = name.strip().lower()
    try:
        hasher = hashlib.new(name)
    except ValueError:
        hasher = None
    if hasher is None or name.startswith("shake_"):
        usable = sorted(
            a for a in hashlib.algorithms_available if not a.startswith("shake_")
        )
        raise ConfigError(
            f"hashing_algorithm {name!r} is not a fixed-length hashlib algorithm; "
            f"one of: {', '.join(usable)}"
        )
    return name


def _tls_files(default: Mapping[str, str]) -> tuple[str, str] | None:
    """
    Glance's C{cert_file} and C{key_file}: the API port speaks TLS with
    them. Both or neither; checked here so that a typo stops the start
    with the option's name.
    """
    cert = (default.get("cert_file") or "").strip()
    key = (default.get("key_file") or "").strip()
    if not cert and not key:
        return None
    if not cert or not key:
        raise ConfigError("cert_file and key_file must be set together (TLS on the API port)")
    for name, path in (("cert_file", cert), ("key_file", key)):
        if not os.path.isfile(path):
            raise ConfigError(f"{name} {path!r} is not a readable file")
    return os.path.abspath(cert), os.path.abspath(key)


def _escape(value: str) -> str:
    """A value for a Twisted endpoint string (C{\\}, C{:} and C{=} escaped)."""
    return "".join("\\" + c if c in "\\:=" else c for c in value)


def _listen_endpoint(host: str, port: int, tls: tuple[str, str] | None) -> str:
    """The endpoint string for C{bind_host}/C{bind_port}, TLS with C{tls}."""
    where = f"{port}:interface={_escape(host)}"
    if tls is None:
        return f"tcp:{where}"
    cert, key = tls
    return f"ssl:{where}:certKey={_escape(cert)}:privateKey={_escape(key)}"


def default_node_id(endpoint: str) -> str:
    """
    HOST:PORT of this node: unique per host and port, and stable across
    restarts. Without a fixed port (port 0, a UNIX socket) the process id
    stands in for it: unique, though a restarted node then leaves its old
    uploads to expire.
    """
    fields = endpoint.split(":")
    port = fields[1] if len(fields) > 1 and fields[0] in ("tcp", "tcp6", "ssl") else ""
    if not port.isdigit() or int(port) == 0:
        port = f"pid{os.getpid()}"
    return f"{socket.gethostname()}:{port}"


def _registry_url(section: Mapping[str, str]) -> str | None:
    url = (section.get("registry_url") or "").strip().rstrip("/")
    if not url:
        return None
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"registry_url {url!r} is not an http(s) URL")
    return url


def _pool_unused_timeout(section: Mapping[str, str]) -> float:
    name = "registry_client_pool_unused_timeout"
    seconds = _seconds(section, name, 240.0)
    if seconds >= REGISTRY_KEEPALIVE_SECONDS:
        raise ConfigError(
            f"{name} must be below glance-registry's keep-alive, "
            f"{REGISTRY_KEEPALIVE_SECONDS:g} seconds"
        )
    return seconds


def _seconds_or_zero(section: Mapping[str, str], name: str, default: float) -> float:
    """Seconds, where C{0} is allowed too."""
    raw = (section.get(name) or "").strip()
    try:
        if float(raw) == 0:
            return 0.0
    except ValueError:
        pass  # _seconds says what is wrong
    return _seconds(section, name, default)


def _seconds(section: Mapping[str, str], name: str, default: float) -> float:
    raw = section.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number of seconds, not {raw!r}") from None
    if not 0 < value < float("inf"):
        raise ConfigError(f"{name} must be a finite number of seconds above 0")
    return value


def _quotas(section: Mapping[str, str]) -> ImageQuotas:
    """
    The quotas of [DEFAULT]; see L{ImageQuotas}. A location quota of 0
    is refused: every image with data has a location, so it would fail
    every upload after its data was sent.
    """
    defaults = ImageQuotas()
    values = {
        name: _int(section, name, getattr(defaults, name), minimum=-(2**63))
        for name in ("image_member_quota", "image_property_quota", "image_tag_quota",
                     "image_location_quota")
    }
    if values["image_location_quota"] == 0:
        raise ConfigError(
            "image_location_quota must be at least 1 (or negative: unlimited); "
            "an image with data has a location"
        )
    return ImageQuotas(**values)


def _cache_config(parser: configparser.ConfigParser, revalidate: bool) -> CacheConfig:
    """The [cache] section; see L{CacheConfig}."""
    section: Mapping[str, str] = (
        {k: v for k, v in parser["cache"].items() if k not in parser.defaults()}
        if parser.has_section("cache")
        else {}
    )
    defaults = CacheConfig()
    urls = tuple(u.strip().rstrip("/") for u in section.get("purge_urls", "").split(",") if u.strip())
    for url in urls:
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"purge_urls entry {url!r} is not an http(s) URL")
    return CacheConfig(
        public_max_age=_int(section, "public_max_age", defaults.public_max_age),
        metadata_max_age=_int(section, "metadata_max_age", defaults.metadata_max_age),
        purge_urls=urls,
        purge_attempts=_int(section, "purge_attempts", defaults.purge_attempts, minimum=1),
        purge_repeat_delay=_int(section, "purge_repeat_delay", defaults.purge_repeat_delay),
        revalidate=revalidate,
    )


def _image_format_config(parser: configparser.ConfigParser) -> ImageFormatConfig:
    """The [image_format] section; see L{ImageFormatConfig}."""
    section: Mapping[str, str] = (
        parser["image_format"] if parser.has_section("image_format") else {}
    )
    defaults = ImageFormatConfig()

    def names(option: str) -> tuple[str, ...]:
        raw = section.get(option)
        if raw is None:
            return tuple(getattr(defaults, option))
        return tuple(t.strip() for t in raw.split(",") if t.strip())

    return ImageFormatConfig(
        require_image_format_match=bool_option(
            section, "require_image_format_match", defaults.require_image_format_match
        ),
        vmdk_allowed_types=names("vmdk_allowed_types"),
        disk_formats=names("disk_formats"),
        container_formats=names("container_formats"),
        gpt_safety_checks_nonfatal=names("gpt_safety_checks_nonfatal"),
    )


def _image_conversion_config(parser: configparser.ConfigParser) -> ImageConversionConfig:
    """The [image_conversion] section; see L{ImageConversionConfig}."""
    section: Mapping[str, str] = (
        parser["image_conversion"] if parser.has_section("image_conversion") else {}
    )
    output = (section.get("output_format") or "").strip() or None
    if output is not None and output not in ("raw", "qcow2", "vmdk"):
        raise ConfigError(f"output_format must be raw, qcow2 or vmdk, not {output!r}")
    defaults = ImageConversionConfig()
    return ImageConversionConfig(
        output_format=output,
        work_dir=(section.get("work_dir") or "").strip() or None,
        timeout=_seconds(section, "timeout", defaults.timeout),
        memory_limit=_int(section, "memory_limit", defaults.memory_limit, minimum=1 << 20),
    )
