"""How each method trains: transfer (Zoom-shot and its baselines); distill and align come later."""
from .transfer import TransferConfig, fit, transfer

__all__ = ["TransferConfig", "fit", "transfer"]
