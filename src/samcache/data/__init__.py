"""Dataset stores: one Zarr group per image set, the same contract for every source."""

from samcache.data.store import DatasetStore, TaskInfo, write_dataset_store

__all__ = ["DatasetStore", "TaskInfo", "write_dataset_store"]
