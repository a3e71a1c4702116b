"""Data: the record schema, datasets on disk (tfds ArrayRecord), manifests and corpus readers."""

from speechfuse.data.schema import check_example, features
from speechfuse.data.storage import (
    BadRecord,
    BadRecordError,
    IncompleteDatasetError,
    SplitSource,
    bad_records,
    dataset_info,
    is_complete,
    open_split,
    write_dataset,
)
