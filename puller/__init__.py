"""Storage for model artifacts: ModelMesh's storage-config format, file/PVC,
HTTP(S) and S3-compatible backends, a content-addressed local cache, retries.

Imports nothing from mesh/ or runtime_adapter/.

    puller = Puller(PullerConfig(cache_dir=Path("/models-cache"), storage_config_dir=Path("/storage-config")))
    pulled = puller.pull("mnist__isvc-1234", "s3://models/mnist", '{"storage_key": "localMinIO"}')
    ...  # load pulled.path
    puller.release("mnist__isvc-1234")
"""

from .backends.local import disk_size
from .cache import CacheEntry
from .errors import PullError
from .puller import PulledModel, Puller, PullerConfig
from .safe_paths import safe_join
from .source import ModelSource, parse_model_source
from .storage_config import StorageConfig, StorageEntry

__all__ = [
    "CacheEntry",
    "ModelSource",
    "PullError",
    "PulledModel",
    "Puller",
    "PullerConfig",
    "StorageConfig",
    "StorageEntry",
    "disk_size",
    "parse_model_source",
    "safe_join",
]
