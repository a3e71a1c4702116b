"""The one tfds builder behind every speechfuse dataset: name, features and splits are arguments.

Only `storage.write_dataset` imports this module. Readers open the written directory with
`tfds.builder_from_directory`, which needs neither this module nor a registered dataset name.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import tensorflow_datasets as tfds

VERSION = "1.0.0"


class SpeechDatasetBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Writes the examples of given split generators as ArrayRecord files, in the order yielded.

  Subclassed per dataset by `make_builder` (tfds takes the directory name from the class).
  """

  RELEASE_NOTES = {VERSION: "speechfuse record schema, see speechfuse/data/schema.py."}
  VERSION = tfds.core.Version(VERSION)

  def __init__(
      self,
      *,
      features: tfds.features.FeaturesDict,
      description: str,
      splits: Mapping[str, Callable[[], Iterable[dict[str, Any]]]],
      **kwargs: Any,
  ):
    self._features = features
    self._description = description
    self._splits = dict(splits)
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    # Order is kept as yielded: the generators are deterministic, and grain shuffles at read time.
    return tfds.core.DatasetInfo(
        builder=self, description=self._description, features=self._features, disable_shuffling=True)

  def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Iterable[Any]]:
    del dl_manager  # Everything is local; the split generators read their own inputs.
    return {split: self._generate_examples(split) for split in self._splits}

  def _generate_examples(self, split: str) -> Iterable[tuple[int, dict[str, Any]]]:
    yield from enumerate(self._splits[split]())

  # tfds prints where it writes and that "subsequent calls will reuse this data": neither holds here
  # (storage.write_dataset builds in a staging directory, then moves it), so say nothing.
  def _log_download_bytes(self) -> None:
    pass

  def _log_download_done(self) -> None:
    pass


def make_builder(
    name: str,
    *,
    data_dir: str,
    features: tfds.features.FeaturesDict,
    splits: Mapping[str, Callable[[], Iterable[dict[str, Any]]]],
    description: str = "",
) -> SpeechDatasetBuilder:
  """A builder writing `splits` (split -> callable yielding records) to `data_dir/name/VERSION/`."""
  tfds.disable_progress_bar()  # a run prints its own progress; tfds's bars would interleave with it
  builder_class = type(name, (SpeechDatasetBuilder,), {"name": name}, skip_registration=True)
  return builder_class(
      features=features, description=description, splits=splits, data_dir=data_dir,
      file_format="array_record")
