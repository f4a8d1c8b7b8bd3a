"""Feature cache: features computed once per (model, preprocessing, data), stored as checked shards."""
from .arrays import write_features
from .embed import embed, find_cache
from .store import CacheError, Features, load_features

__all__ = ["embed", "find_cache", "load_features", "write_features", "Features", "CacheError"]
