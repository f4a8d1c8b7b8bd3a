"""Errors that reach the user as one clear line (the CLI prints `error: <message>`)."""


class ZeroshiftError(Exception):
    """Base of every error zeroshift raises on purpose; its message is a complete sentence for a user."""


class SpecError(ZeroshiftError):
    """An unknown scheme or a malformed spec string."""


class MissingBackend(ZeroshiftError):
    """An optional dependency is not installed; the message says what to install."""


class MissingWeights(ZeroshiftError):
    """Weights or data files are absent; the message says where they come from."""


class DataError(ZeroshiftError):
    """A data source is empty, unreadable or inconsistent."""


class CacheMismatch(ZeroshiftError):
    """A feature cache or artefact was made by another model, preprocessing or data source."""


class NoPixelRecipe(ZeroshiftError):
    """A model's preprocessing has no graph form, so its export takes float input (`--input float`)."""


class CacheError(ZeroshiftError):
    """A feature cache that is incomplete, corrupted or holds unusable numbers."""


def fetch_failed(spec: str, instead: str, error: BaseException) -> MissingWeights:
    """The one-line error for hub weights that could not be fetched: what to pass instead, and why."""
    cause = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if len(cause) > 160:  # cut at a word, marked, not mid-word
        cause = cause[:160].rsplit(" ", 1)[0].rstrip(",.:;") + " ..."
    return MissingWeights(f"could not fetch weights for {spec}: no network? give {instead} [{cause}]")
