"""Errors with stable codes. Raised in domain code, carried over the bus as micro service errors."""

from __future__ import annotations

from enum import StrEnum


class Code(StrEnum):
    """Stable error codes. Clients may match on them; never rename one."""

    BAD_REQUEST = "bad_request"
    INTERNAL = "internal"
    BUS_TIMEOUT = "bus.timeout"
    BUS_UNAVAILABLE = "bus.no_responders"
    STATE_CONFLICT = "state.conflict"

    REGISTRY_DUPLICATE = "registry.duplicate"
    REGISTRY_UNKNOWN = "registry.unknown"
    REGISTRY_UNSUPPORTED_SCHEME = "registry.unsupported_scheme"
    REGISTRY_FETCH_FAILED = "registry.fetch_failed"
    REGISTRY_FILE_NOT_ALLOWED = "registry.file_not_allowed"  # issue 10: file:// outside the allowed directory
    SERVICE_INVALID = "service.invalid"
    SERVICE_DUPLICATE = "service.duplicate"

    SERVICE_NOT_FOUND = "service.not_found"
    SERVICE_UNSUPPORTED = "service.unsupported"
    SERVICE_NOT_RUNNING = "service.not_running"
    SERVICE_START_FAILED = "service.start_failed"
    SERVICE_NOT_READY = "service.not_ready"
    SERVICE_CRASHED = "service.crashed"
    FIT_GPU_MEMORY = "fit.gpu_memory"
    FIT_MEMORY = "fit.memory"
    FIT_DISK = "fit.disk"
    IMAGE_NOT_FOUND = "image.not_found"
    IMAGE_NOT_DOWNLOADED = "image.not_downloaded"
    PULL_FAILED = "image.pull_failed"
    CONTAINER_NOT_FOUND = "container.not_found"
    VOLUME_NOT_FOUND = "volume.not_found"
    PORT_UNAVAILABLE = "port.unavailable"
    DOCKER_UNAVAILABLE = "docker.unavailable"
    DOCKER_ERROR = "docker.error"
    OPERATION_NOT_FOUND = "operation.not_found"
    # --- cli: pull cancel, service logs (issue 12) ---
    PULL_NOT_IN_FLIGHT = "pull.not_in_flight"
    PULL_CANCELLED = "pull.cancelled"
    LOGS_SESSION_NOT_FOUND = "logs.session_not_found"

    # Refusals decided by the HTTP gateway itself (never travel on the bus).
    AUTH_REQUIRED = "auth.required"
    AUTH_INVALID = "auth.invalid"
    FOREIGN_ORIGIN = "security.foreign_origin"
    CROSS_SITE = "security.cross_site"
    HOST_NOT_ALLOWED = "security.host_not_allowed"
    SERVICE_ORIGIN = "security.service_origin"  # issue 10: a page premd serves (its origin) or started (a service port)
    CORS_ORIGIN_NOT_ALLOWED = "cors.origin_not_allowed"
    PROXY_UNREACHABLE = "proxy.unreachable"
    BODY_TOO_LARGE = "request.too_large"
    BODY_INVALID = "request.invalid"
    MODEL_NOT_FOUND = "model_not_found"
    # OpenAI clients (issue 15)
    MODEL_NOT_DOWNLOADED = "model_not_downloaded"
    KEEP_ALIVE_INVALID = "request.keep_alive_invalid"

    # --- reliability (issue 9): a container of another premd (or not premd's) holds the service's name ---
    CONTAINER_NAME_TAKEN = "container.name_taken"
    # --- reliability (issue 9): the bus connection is down (reconnecting); answered at once, not at a timeout ---
    BUS_DISCONNECTED = "bus.disconnected"

    # --- packages: validation (builder/package; HTTP status per code in PACKAGE_HTTP_STATUS) ---
    PACKAGE_NOT_MULTIPART = "package.not_multipart"
    PACKAGE_NO_FILE = "package.no_file"
    PACKAGE_TOO_LARGE = "package.too_large"
    PACKAGE_TOO_MANY_ENTRIES = "package.too_many_entries"
    PACKAGE_ZIP_BOMB = "package.zip_bomb"
    PACKAGE_NOT_ZIP = "package.not_zip"
    PACKAGE_TRUNCATED = "package.truncated"
    PACKAGE_CORRUPT = "package.corrupt"
    PACKAGE_UNSUPPORTED_ZIP = "package.unsupported_zip"
    PACKAGE_UNSAFE_PATH = "package.unsafe_path"
    PACKAGE_SYMLINK = "package.symlink"
    PACKAGE_DUPLICATE_ENTRY = "package.duplicate_entry"
    PACKAGE_OS_METADATA = "package.os_metadata"
    PACKAGE_NO_CONFIG = "package.no_config"
    PACKAGE_YAML_SYNTAX = "package.yaml_syntax"
    PACKAGE_CONFIG_INVALID = "package.config_invalid"
    PACKAGE_BAD_NAME = "package.bad_name"
    PACKAGE_BAD_MODEL = "package.bad_model"
    PACKAGE_UNPINNED = "package.unpinned"
    PACKAGE_BAD_REQUIREMENTS = "package.bad_requirements"
    PACKAGE_UNKNOWN_ARCHITECTURE = "package.unknown_architecture"
    PACKAGE_PYTHON_INCOMPATIBLE = "package.python_incompatible"
    PACKAGE_CUDA_INCOMPATIBLE = "package.cuda_incompatible"
    PACKAGE_ID_MISMATCH = "package.id_mismatch"
    # --- packages: image build (builder/image) ---
    BUILD_NO_BASE_IMAGE = "build.no_base_image"
    BUILD_WHEELHOUSE_FAILED = "build.wheelhouse_failed"
    # --- packages: pipeline (builder stages, package lookups) ---
    PACKAGE_NOT_FOUND = "packages.not_found"
    PACKAGE_UPLOAD_LOST = "packages.upload_lost"
    BUILD_FAILED = "build.failed"
    BUILD_TEST_FAILED = "build.test_failed"
    BUILD_SETUP_FAILED = "build.setup_failed"
    BUILD_SETUP_TIMEOUT = "build.setup_timeout"
    BUILD_PUSH_FAILED = "build.push_failed"


class AppError(Exception):
    """Root of premd's errors: a stable code and a message meant for people."""

    kind = "error"
    retryable = False

    def __init__(self, code: Code | str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = str(code)
        self.message = message


class InvalidError(AppError):
    """The request is malformed or names something invalid (HTTP 400/422)."""

    kind = "invalid"


class NotFoundError(AppError):
    """The thing named does not exist (HTTP 404)."""

    kind = "not_found"


class ConflictError(AppError):
    """The request clashes with current state (HTTP 409)."""

    kind = "conflict"


class FitError(AppError):
    """The machine cannot hold what was asked for; a force flag overrides (HTTP 409)."""

    kind = "fit"


class UnavailableError(AppError):
    """A dependency (bus, Docker, a registry) does not answer now (HTTP 503)."""

    kind = "unavailable"
    retryable = True


class InternalError(AppError):
    """A bug or an unexpected failure; details are in the logs, never in the message."""

    kind = "internal"


_KIND_BY_CODE: dict[str, type[AppError]] = {
    Code.BAD_REQUEST: InvalidError,
    Code.INTERNAL: InternalError,
    Code.BUS_TIMEOUT: UnavailableError,
    Code.BUS_UNAVAILABLE: UnavailableError,
    Code.STATE_CONFLICT: ConflictError,
    Code.REGISTRY_DUPLICATE: ConflictError,
    Code.REGISTRY_UNKNOWN: NotFoundError,
    Code.REGISTRY_UNSUPPORTED_SCHEME: InvalidError,
    Code.REGISTRY_FETCH_FAILED: UnavailableError,
    Code.REGISTRY_FILE_NOT_ALLOWED: InvalidError,
    Code.SERVICE_INVALID: InvalidError,
    Code.SERVICE_DUPLICATE: ConflictError,
    Code.SERVICE_NOT_FOUND: NotFoundError,
    Code.SERVICE_UNSUPPORTED: ConflictError,
    Code.SERVICE_NOT_RUNNING: ConflictError,
    Code.SERVICE_START_FAILED: ConflictError,
    Code.SERVICE_NOT_READY: UnavailableError,
    Code.SERVICE_CRASHED: ConflictError,
    Code.FIT_GPU_MEMORY: FitError,
    Code.FIT_MEMORY: FitError,
    Code.FIT_DISK: FitError,
    Code.IMAGE_NOT_FOUND: NotFoundError,
    Code.IMAGE_NOT_DOWNLOADED: ConflictError,
    Code.PULL_FAILED: ConflictError,
    Code.CONTAINER_NOT_FOUND: NotFoundError,
    Code.VOLUME_NOT_FOUND: NotFoundError,
    Code.PORT_UNAVAILABLE: ConflictError,
    Code.CONTAINER_NAME_TAKEN: ConflictError,
    Code.DOCKER_UNAVAILABLE: UnavailableError,
    Code.DOCKER_ERROR: InternalError,
    Code.OPERATION_NOT_FOUND: NotFoundError,
    # --- reliability (issue 9) ---
    Code.BUS_DISCONNECTED: UnavailableError,
    # --- cli: pull cancel, service logs (issue 12) ---
    Code.PULL_NOT_IN_FLIGHT: ConflictError,
    Code.PULL_CANCELLED: ConflictError,
    Code.LOGS_SESSION_NOT_FOUND: NotFoundError,
    # --- packages: validation / image build ---
    **{code: InvalidError for code in Code if code.startswith("package.")},
    Code.BUILD_NO_BASE_IMAGE: ConflictError,
    Code.BUILD_WHEELHOUSE_FAILED: ConflictError,
    # --- packages: pipeline ---
    Code.PACKAGE_NOT_FOUND: NotFoundError,
    Code.PACKAGE_UPLOAD_LOST: UnavailableError,
    Code.BUILD_FAILED: ConflictError,
    Code.BUILD_TEST_FAILED: ConflictError,
    Code.BUILD_SETUP_FAILED: ConflictError,
    Code.BUILD_SETUP_TIMEOUT: ConflictError,
    Code.BUILD_PUSH_FAILED: ConflictError,
}


# --- packages: validation ---
# The HTTP status the gateway answers for each package code: 413 when a size limit was hit, 400 when the upload
# is not a usable zip, 422 when the zip is fine but what it holds (jid.yaml, the model, the pins) is not.
PACKAGE_HTTP_STATUS: dict[str, int] = {
    Code.PACKAGE_NOT_MULTIPART: 415,
    Code.PACKAGE_NO_FILE: 400,
    Code.PACKAGE_TOO_LARGE: 413,
    Code.PACKAGE_TOO_MANY_ENTRIES: 413,
    Code.PACKAGE_ZIP_BOMB: 413,
    Code.PACKAGE_NOT_ZIP: 400,
    Code.PACKAGE_TRUNCATED: 400,
    Code.PACKAGE_CORRUPT: 400,
    Code.PACKAGE_UNSUPPORTED_ZIP: 400,
    Code.PACKAGE_UNSAFE_PATH: 400,
    Code.PACKAGE_SYMLINK: 400,
    Code.PACKAGE_DUPLICATE_ENTRY: 400,
    Code.PACKAGE_OS_METADATA: 400,
    Code.PACKAGE_NO_CONFIG: 422,
    Code.PACKAGE_YAML_SYNTAX: 422,
    Code.PACKAGE_CONFIG_INVALID: 422,
    Code.PACKAGE_BAD_NAME: 422,
    Code.PACKAGE_BAD_MODEL: 422,
    Code.PACKAGE_UNPINNED: 422,
    Code.PACKAGE_BAD_REQUIREMENTS: 422,
    Code.PACKAGE_UNKNOWN_ARCHITECTURE: 422,
    Code.PACKAGE_PYTHON_INCOMPATIBLE: 422,
    Code.PACKAGE_CUDA_INCOMPATIBLE: 422,
    Code.PACKAGE_ID_MISMATCH: 422,
}


def error_for(code: Code | str, message: str) -> AppError:
    """The typed error for a code: ours, for domain code to raise, or one received from the bus (unknown codes
    stay AppError)."""
    return _KIND_BY_CODE.get(code, AppError)(code, message)


class SettingsError(Exception):
    """A setting is unknown or malformed; premd does not start."""

    def __init__(self, variable: str, problem: str) -> None:
        super().__init__(f"{variable}: {problem}")
        self.variable = variable
