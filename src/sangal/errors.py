"""User-facing errors: each message is one line naming the file and what is wrong."""


class SangalError(Exception):
    """Base for errors the CLI reports as one line (``error: ...``) instead of a traceback."""


class DatasetError(SangalError):
    """Wrong dataset layout, unparseable file name or unreadable image."""


class AttributeFileError(SangalError):
    """Attribute .mat file that is malformed or does not match the images."""


class CheckpointError(SangalError):
    """Checkpoint that is corrupt or belongs to another model."""


class CacheError(SangalError):
    """Heat-map cache that is stale, incomplete or built for something else."""


class WeightsError(SangalError):
    """Pretrained weights that cannot be fetched or read."""


class ConfigError(SangalError):
    """Invalid configuration value or override."""


class RequestError(SangalError):
    """A bad request to `sangal serve` (an upload, a gallery id); ``status`` is its HTTP status code."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status
