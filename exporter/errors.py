"""The exporter's exceptions.

    ExporterError
     +-- SourceError              reading one host source failed; carries `source` and `reason`
     |    +-- SourceUnavailable   an optional source is absent (no NVIDIA driver): normal, not counted
     |    +-- SourceMissing       a file the source needs does not exist (reason "missing")
     |    +-- SourceTooLarge      a file is over its size bound (reason "too_large")
     |    +-- SourceNotAFile      a directory or device where a file should be (reason "not_a_file")
     |    +-- SourceReadError     the read itself failed: permission, I/O (reason "io" / "permission")
     |    +-- SourceParseError    the text is not what the format says (reason "parse")
     |    +-- SourceFormatError   a layout this version does not know (reason "format")
     |    +-- SourceChecksumError the kubelet's checksum does not verify (reason "checksum")
     |    +-- SourceRpcError      a gRPC call failed (podresources): reason "unavailable", "deadline",
     |                            "resource_exhausted", "bad_response" or "rpc"
     +-- InvalidText              a low-level value (cpuset, cpumask, SLIT row, quantity) does not parse;
     |                            also a ValueError, so callers that expect one keep working
     +-- ConfigError              the exporter's own configuration (flags, profiles file) is wrong
     +-- ApiError                 the Kubernetes API refused or failed a request; `api_error()` maps each
          +-- ApiNotFound         404 for an object that does not exist (create it)
          +-- ApiCrdMissing       404 for the resource type itself: the NRT CRD is not installed
          +-- ApiConflict         409: someone else wrote first (re-read, retry)
          +-- ApiInvalid          422: the server rejected the object; its message says why (do not loop)
          +-- ApiForbidden        401/403: RBAC or credentials (retry slowly)
          +-- ApiUnavailable      429, 5xx, timeouts and connection errors (back off and retry)

`reason` is the value of the `reason` label of `numa_topology_source_errors_total`.
"""

from __future__ import annotations


class ExporterError(Exception):
    """Base of every error the exporter raises on purpose."""


class SourceError(ExporterError):
    reason = "error"

    def __init__(self, source: str, message: str) -> None:
        super().__init__(f"{source}: {message}")
        self.source = source
        self.message = message


class SourceUnavailable(SourceError):
    reason = "unavailable"


class SourceMissing(SourceError):
    reason = "missing"


class SourceTooLarge(SourceError):
    reason = "too_large"


class SourceNotAFile(SourceError):
    reason = "not_a_file"


class SourceReadError(SourceError):
    reason = "io"


class SourcePermissionError(SourceReadError):
    reason = "permission"


class SourceParseError(SourceError):
    reason = "parse"


class SourceFormatError(SourceError):
    reason = "format"


class SourceChecksumError(SourceError):
    reason = "checksum"


class SourceContradicted(SourceError):
    """Read fine, but another source shows it is not what the kubelet runs with."""

    reason = "contradicted"


class SourceRpcError(SourceError):
    def __init__(self, source: str, message: str, *, reason: str) -> None:
        super().__init__(source, message)
        self.reason = reason


class InvalidText(ExporterError, ValueError):
    """A value in a known syntax (cpuset, hex mask, distance row, quantity) that does not follow it."""


class ConfigError(ExporterError):
    """A flag, profile file or other exporter configuration is invalid."""


class ApiError(ExporterError):
    result = "error"

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class ApiNotFound(ApiError):
    result = "not_found"


class ApiCrdMissing(ApiError):
    result = "crd_missing"


class ApiConflict(ApiError):
    result = "conflict"


class ApiInvalid(ApiError):
    result = "invalid"


class ApiForbidden(ApiError):
    result = "forbidden"


class ApiUnavailable(ApiError):
    result = "unavailable"
