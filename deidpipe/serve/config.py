"""``deidpipe serve``'s configuration: a YAML file, with the common settings also as options.

```yaml
ae_title: DEIDPIPE
host: 0.0.0.0
port: 11112
queue: /var/lib/deidpipe/queue
policy: /etc/deidpipe/policy.yaml        # optional (default: the Basic profile)
key_file: /etc/deidpipe/project.key      # optional (default: $DEIDPIPE_KEY / $DEIDPIPE_KEY_FILE)
allow:
  ae_titles: [CT1, MR2]                  # empty or absent: any calling AE title
  addresses: [10.1.0.0/16, 127.0.0.1]    # empty or absent: any address
tls: {cert: node.crt, key: node.key, ca: ca.crt, require_client_cert: true}
quiet_period_s: 30                       # a series counts as complete after this many seconds without a new object
artim_timeout_s: 5                       # seconds from connect to a complete A-ASSOCIATE-RQ
max_associations: 64                     # associations at once (then A-ASSOCIATE-RJ, transient)
max_pending: 128                         # connections not yet associated (16 per peer address)
memory_budget_mb: 0                      # data sets in memory, inflated size (0: a quarter of the RAM)
retry: {initial_s: 2, max_interval_s: 300, max_attempts: 50, max_age_s: 86400}
destinations:
  - {name: pacs, dicom: "PACS@10.1.2.3:104", calling_ae: DEIDPIPE, tls: {ca: pacs-ca.crt}}
  - {name: web, stow: "https://host/dicom-web"}
  - {name: copy, folder: /data/deid}
```

The project key is never part of the configuration: only the path of the file that holds it.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from deidpipe.errors import DeidError


class ConfigError(DeidError):
    """A configuration that cannot be used (the message names the setting, never a DICOM value)."""


@dataclass(frozen=True)
class TlsConfig:
    cert: Path | None = None
    key: Path | None = None
    ca: Path | None = None
    require_client_cert: bool = False

    @classmethod
    def from_mapping(cls, data: dict[str, Any] | None, base: Path) -> TlsConfig | None:
        if not data:
            return None
        unknown = set(data) - {"cert", "key", "ca", "require_client_cert"}
        if unknown:
            raise ConfigError(f"unknown tls setting(s): {', '.join(sorted(unknown))}")

        def path(name: str) -> Path | None:
            return (base / data[name]) if data.get(name) else None

        return cls(path("cert"), path("key"), path("ca"), bool(data.get("require_client_cert", False)))


@dataclass(frozen=True)
class RetryConfig:
    initial_s: float = 2.0
    max_interval_s: float = 300.0
    max_attempts: int = 50
    max_age_s: float = 86400.0

    def delay(self, attempts: int) -> float:
        """Seconds to wait after the ``attempts``-th failed attempt (exponential, capped)."""
        return min(self.max_interval_s, self.initial_s * (2 ** max(attempts - 1, 0)))


_DEST_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_AET_HOST_PORT = re.compile(r"^(?P<aet>[^@]{1,16})@(?P<host>\[[^\]]+\]|[^:]+):(?P<port>\d{1,5})$")


@dataclass(frozen=True)
class Destination:
    """Where de-identified objects go: ``kind`` is ``dicom`` (C-STORE), ``stow`` (STOW-RS) or ``folder``."""

    name: str
    kind: str
    ae_title: str = ""
    host: str = ""
    port: int = 0
    calling_ae: str | None = None  # default: the node's own AE title
    tls: TlsConfig | None = None
    url: str = ""
    path: Path | None = None
    #: Objects per association (C-STORE) or per request (STOW-RS) before it is renewed.
    batch: int = 64
    #: Seconds to wait for one C-STORE response (then the association is dropped and the object retried).
    timeout_s: float = 10.0

    def describe(self) -> str:
        if self.kind == "dicom":
            return f"{self.name} (C-STORE {self.ae_title}@{self.host}:{self.port}{' TLS' if self.tls else ''})"
        if self.kind == "stow":
            return f"{self.name} (STOW-RS {self.url})"
        return f"{self.name} (folder {self.path})"


def parse_dicom_dest(spec: str, name: str | None = None) -> Destination:
    """``AET@HOST:PORT`` as a C-STORE destination."""
    m = _AET_HOST_PORT.match(spec.strip())
    if not m:
        raise ConfigError("a DICOM destination is written AET@HOST:PORT")
    port = int(m["port"])
    if not 0 < port < 65536:
        raise ConfigError("a DICOM destination's port must be 1 to 65535")
    return Destination(name or f"dicom-{m['aet'].strip()}", "dicom", ae_title=m["aet"].strip(),
                       host=m["host"].strip("[]"), port=port)


def _destination(data: dict[str, Any], base: Path, index: int) -> Destination:
    kinds = [k for k in ("dicom", "stow", "folder") if data.get(k)]
    if len(kinds) != 1:
        raise ConfigError(f"destination {index + 1}: give exactly one of dicom, stow, folder")
    unknown = set(data) - {"name", "dicom", "stow", "folder", "calling_ae", "tls", "batch", "timeout_s"}
    if unknown:
        raise ConfigError(f"destination {index + 1}: unknown setting(s): {', '.join(sorted(unknown))}")
    kind = kinds[0]
    name = data.get("name")
    if kind == "dicom":
        dest = parse_dicom_dest(str(data["dicom"]), name)
        dest = replace(dest, calling_ae=data.get("calling_ae"), tls=TlsConfig.from_mapping(data.get("tls"), base))
    elif kind == "stow":
        dest = Destination(name or f"stow-{index + 1}", "stow", url=str(data["stow"]).rstrip("/"),
                           tls=TlsConfig.from_mapping(data.get("tls"), base))
    else:
        dest = Destination(name or f"folder-{index + 1}", "folder", path=base / str(data["folder"]))
    if data.get("batch"):
        dest = replace(dest, batch=max(1, int(data["batch"])))
    if data.get("timeout_s"):
        dest = replace(dest, timeout_s=max(1.0, float(data["timeout_s"])))
    return dest


@dataclass(frozen=True)
class ServeConfig:
    queue: Path
    ae_title: str = "DEIDPIPE"
    host: str = "127.0.0.1"
    port: int = 11112
    allowed_ae_titles: tuple[str, ...] = ()
    allowed_addresses: tuple[str, ...] = ()
    tls: TlsConfig | None = None
    destinations: tuple[Destination, ...] = ()
    policy_file: Path | None = None
    key_file: Path | None = None
    quiet_period_s: float = 30.0
    retry: RetryConfig = field(default_factory=RetryConfig)
    #: Objects taken from the queue at once by the processing stage.
    batch: int = 32
    #: Seconds a peer may stay silent on an association before the node drops it.
    network_timeout_s: float = 60.0
    #: The ARTIM timer (PS3.8 section 9.1.2): seconds from a connection's accept until its whole A-ASSOCIATE-RQ
    #: (and TLS handshake) is in; a connection that takes longer is closed.
    artim_timeout_s: float = 5.0
    #: Associations served at once; one more is rejected (transient, local limit exceeded).
    max_associations: int = 64
    #: Connections not yet associated, in all and per peer address (over a bound the oldest is closed).
    max_pending: int = 128
    max_pending_per_address: int = 16
    #: Bytes of data sets the node holds in memory at once, received and inflated (0: a quarter of the RAM).
    memory_budget_mb: int = 0
    #: The most a deflated data set may inflate to, in the node and in each processing process (0: the budget
    #: shared among the processing processes, at most 1 GiB).
    max_inflated_mb: int = 0
    #: Run the processing stage in its own process (the SCP keeps an interpreter to itself).
    process_in_child: bool = True
    #: Processes that de-identify (the processing stage hands them its objects a few at a time); 1: the
    #: processing stage does it itself; 0: one per CPU core, at most 8.
    workers: int = 0

    def __post_init__(self) -> None:
        if not self.ae_title or len(self.ae_title) > 16:
            raise ConfigError("ae_title must be 1 to 16 characters")
        if not 0 <= self.port < 65536:
            raise ConfigError("port must be 0 to 65535")
        if not self.network_timeout_s > 0:
            raise ConfigError("network_timeout_s must be more than 0")
        if not self.artim_timeout_s > 0:
            raise ConfigError("artim_timeout_s must be more than 0")
        if min(self.max_associations, self.max_pending, self.max_pending_per_address) < 1:
            raise ConfigError("max_associations, max_pending and max_pending_per_address must be at least 1")
        if self.memory_budget_mb < 0 or self.max_inflated_mb < 0:
            raise ConfigError("memory_budget_mb and max_inflated_mb must be 0 (automatic) or more")
        if not 0 <= self.workers <= 256:
            raise ConfigError("workers must be 0 (one per CPU core) to 256")
        names = [d.name for d in self.destinations]
        for n in names:
            if not _DEST_NAME.match(n):
                raise ConfigError("a destination name may hold letters, digits, _ and - only (1 to 64)")
        if len(set(names)) != len(names):
            raise ConfigError("two destinations have the same name")
        for a in self.allowed_addresses:
            try:
                ipaddress.ip_network(a, strict=False)
            except ValueError:
                raise ConfigError("allow.addresses holds an entry that is not an address or network") from None

    @property
    def worker_processes(self) -> int:
        """``workers``, with 0 (auto) resolved to the CPU cores this process may use, at most 8."""
        if self.workers:
            return self.workers
        import os

        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        return max(1, min(8, cores))

    @property
    def memory_budget_bytes(self) -> int:
        """``memory_budget_mb``, with 0 (auto) resolved to a quarter of the machine's memory."""
        if self.memory_budget_mb:
            return self.memory_budget_mb << 20
        import os

        try:
            ram = int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
        except (ValueError, OSError, AttributeError):
            ram = 8 << 30
        return ram // 4

    @property
    def max_inflated_bytes(self) -> int:
        """``max_inflated_mb``, with 0 (auto) resolved to the memory budget shared among the processing processes
        (each holds about two copies of what it inflates), at most 1 GiB, at least 16 MiB."""
        if self.max_inflated_mb:
            return self.max_inflated_mb << 20
        from deidpipe.dicomio.deflate import HARD_CAP, PARSE_COPIES

        share = self.memory_budget_bytes // (PARSE_COPIES * self.worker_processes)
        return max(16 << 20, min(HARD_CAP, share))

    def address_allowed(self, address: str) -> bool:
        if not self.allowed_addresses:
            return True
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in ipaddress.ip_network(a, strict=False) for a in self.allowed_addresses)

    @classmethod
    def from_mapping(cls, data: dict[str, Any], base: Path = Path(".")) -> ServeConfig:
        known = {"queue", "ae_title", "host", "port", "allow", "tls", "destinations", "policy", "key_file",
                 "quiet_period_s", "retry", "batch", "network_timeout_s", "process_in_child",
                 "workers", "artim_timeout_s", "max_associations", "max_pending", "max_pending_per_address",
                 "memory_budget_mb", "max_inflated_mb"}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"unknown setting(s): {', '.join(sorted(unknown))}")
        if not data.get("queue"):
            raise ConfigError("no queue folder: set queue in the file or pass --queue")
        allow = data.get("allow") or {}
        retry = data.get("retry") or {}
        bad_retry = set(retry) - {"initial_s", "max_interval_s", "max_attempts", "max_age_s"}
        if bad_retry:
            raise ConfigError(f"unknown retry setting(s): {', '.join(sorted(bad_retry))}")
        return cls(
            queue=base / str(data["queue"]),
            ae_title=str(data.get("ae_title", "DEIDPIPE")),
            host=str(data.get("host", "127.0.0.1")),
            port=int(data.get("port", 11112)),
            allowed_ae_titles=tuple(str(a) for a in allow.get("ae_titles") or ()),
            allowed_addresses=tuple(str(a) for a in allow.get("addresses") or ()),
            tls=TlsConfig.from_mapping(data.get("tls"), base),
            destinations=tuple(_destination(d, base, i) for i, d in enumerate(data.get("destinations") or ())),
            policy_file=(base / str(data["policy"])) if data.get("policy") else None,
            key_file=(base / str(data["key_file"])) if data.get("key_file") else None,
            quiet_period_s=float(data.get("quiet_period_s", 30.0)),
            retry=RetryConfig(**{k: (int(v) if k == "max_attempts" else float(v)) for k, v in retry.items()}),
            batch=max(1, int(data.get("batch", 32))),
            network_timeout_s=float(data.get("network_timeout_s", 60.0)),
            process_in_child=bool(data.get("process_in_child", True)),
            workers=int(data.get("workers", 0)),
            artim_timeout_s=float(data.get("artim_timeout_s", 5.0)),
            max_associations=int(data.get("max_associations", 64)),
            max_pending=int(data.get("max_pending", 128)),
            max_pending_per_address=int(data.get("max_pending_per_address", 16)),
            memory_budget_mb=int(data.get("memory_budget_mb", 0)),
            max_inflated_mb=int(data.get("max_inflated_mb", 0)),
        )

    @classmethod
    def load(cls, path: str | Path | None, **overrides: Any) -> ServeConfig:
        """The file's settings (if any), then every override that is not None; destinations given as
        options are added to the file's."""
        data: dict[str, Any] = {}
        base = Path(".")
        if path is not None:
            import yaml

            p = Path(path)
            try:
                data = yaml.safe_load(p.read_text()) or {}
            except OSError as exc:
                raise ConfigError(f"cannot read the configuration file ({exc.strerror})") from None
            except yaml.YAMLError:
                raise ConfigError("the configuration file is not valid YAML") from None
            if not isinstance(data, dict):
                raise ConfigError("the configuration file must hold a mapping")
            base = p.parent
        extra = list(overrides.pop("destinations", None) or ())
        if overrides.get("queue") is not None:
            data["queue"] = str(Path(overrides.pop("queue")).resolve())
        cfg = cls.from_mapping(data, base)
        changes = {k: v for k, v in overrides.items() if v is not None}
        if extra:
            changes["destinations"] = cfg.destinations + tuple(extra)
        return replace(cfg, **changes) if changes else cfg
