"""The options of `zeroshift serve` (ServeConfig) and the fixed limits beside them."""
from __future__ import annotations

from dataclasses import dataclass, field

from ..data.images import DEFAULT_MAX_PIXELS
from ..errors import ZeroshiftError

MAX_TEXT_CHARS = 500  # one label, template or text to embed
MAX_TEMPLATES = 64  # templates per request
MAX_NAME = 200  # characters of an image name kept
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


@dataclass(frozen=True)
class ServeConfig:
    """Options of `zeroshift serve` (and of `create_app`)."""

    models: tuple[str, ...] = field(metadata={
        "help": "a VLM spec to serve (repeat --model for several); clients may use only these", "flag": "--model"})
    host: str = field(default="127.0.0.1", metadata={"help": "address to bind; anything but loopback is public"})
    port: int = field(default=8000, metadata={"help": "TCP port"})
    runtime: str = field(default="auto", metadata={
        "help": "image tower runtime", "choices": ["auto", "torch", "onnx"]})
    templates: str | None = field(default=None, metadata={
        "help": "template set name or file used when a request gives none (as `zeroshift predict --templates`; "
                "default: the 'default' set)"})
    max_upload_mb: float = field(default=20.0, metadata={"help": "largest request body in MB (413 beyond)"})
    max_images: int = field(default=32, metadata={"help": "images per request (413 beyond)"})
    max_labels: int = field(default=256, metadata={"help": "labels (or texts to embed) per request (413 beyond)"})
    max_inflight: int = field(default=64, metadata={
        "help": "images being processed at once over all requests; a request beyond it gets 503 at once"})
    batch_window_ms: float = field(default=5.0, metadata={
        "help": "how long a model's batcher waits for more images before encoding a batch"})
    batch_size: int = field(default=32, metadata={"help": "most images per encode_image call"})
    max_pixels: int = field(default=DEFAULT_MAX_PIXELS, metadata={
        "help": "non-JPEG uploads above this many pixels are refused (413); JPEGs are decoded at reduced scale"})
    cache_size: int = field(default=128, metadata={"help": "label sets whose text embeddings are kept per server"})
    request_timeout_s: float = field(default=30.0, metadata={
        "help": "seconds a client has to send a request's headers, and again its body: a connection still "
                "sending headers is closed, a body still arriving gets 408; raise it for large uploads over "
                "slow links"})

    def check(self) -> None:
        """Raise ZeroshiftError on an unusable combination of options."""
        if not self.models:
            raise ZeroshiftError("no model to serve: give at least one --model SPEC (a VLM such as tiny-clip:seed=0)")
        for name in ("max_images", "max_labels", "max_inflight", "batch_size", "max_pixels", "cache_size"):
            if getattr(self, name) < 1:
                raise ZeroshiftError(f"--{name.replace('_', '-')} must be at least 1, not {getattr(self, name)}")
        if not self.max_upload_mb > 0:
            raise ZeroshiftError(f"--max-upload-mb must be positive, not {self.max_upload_mb}")
        if not self.request_timeout_s > 0:
            raise ZeroshiftError(f"--request-timeout-s must be positive, not {self.request_timeout_s}")
        if self.batch_window_ms < 0:
            raise ZeroshiftError(f"--batch-window-ms cannot be negative ({self.batch_window_ms})")
        if self.max_images > self.max_inflight:
            raise ZeroshiftError(f"--max-images {self.max_images} exceeds --max-inflight {self.max_inflight}: "
                                 "no request that large could ever run; lower one or raise the other")
        if not 0 <= self.port <= 65535:
            raise ZeroshiftError(f"--port {self.port} is not a TCP port (0-65535)")


def bind_warning(host: str) -> str | None:
    """The warning line to print when `host` is not a loopback address, else None."""
    if host in LOCAL_HOSTS:
        return None
    return (f"warning: binding {host} makes the service reachable from other machines; it has no "
            "authentication, so put it behind a proxy that has, or bind 127.0.0.1")
