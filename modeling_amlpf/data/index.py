"""The in-memory index every layout reader produces: paths, labels and groups, never pixels."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from datasets import ClassLabel, Value

from .listing import join_relative


@dataclasses.dataclass
class ImageIndex:
    """Column-wise description of a dataset's images.

    Attributes:
        root: absolute data root; `paths` are relative to it ("/"-separated).
        class_names: canonical class names in canonical label order.
        paths, labels, groups: one entry per image. `groups` holds the patient/slide id that splits must
            keep together.
        group_kind: what a group is ("slide", "patient", "image"), for log lines and docs.
        metadata: extra columns (e.g. magnification), one list per column, aligned with `paths`.
        metadata_features: the `datasets` feature of each metadata column (default `Value("string")`).
        predefined_test: for layouts with an official test set, True where the image belongs to it.
        summary: one human-readable line about the dataset, used in the DatasetInfo description.
    """

    root: str
    class_names: list[str]
    paths: list[str]
    labels: list[int]
    groups: list[str]
    group_kind: str
    metadata: dict[str, list] = dataclasses.field(default_factory=dict)
    metadata_features: dict[str, Value | ClassLabel] = dataclasses.field(default_factory=dict)
    predefined_test: list[bool] | None = None
    summary: str = ""

    def __post_init__(self) -> None:
        lengths = {len(self.paths), len(self.labels), len(self.groups), *(len(v) for v in self.metadata.values())}
        if self.predefined_test is not None:
            lengths.add(len(self.predefined_test))
        if len(lengths) != 1:
            raise ValueError(f"ImageIndex columns differ in length: {sorted(lengths)}")

    def __len__(self) -> int:
        return len(self.paths)

    def absolute_path(self, position: int) -> str:
        return join_relative(self.root, self.paths[position])

    def subset(self, positions: Sequence[int]) -> ImageIndex:
        """A new index holding the given positions, in the given order."""

        def pick(values: list) -> list:
            return [values[i] for i in positions]

        return dataclasses.replace(
            self,
            paths=pick(self.paths),
            labels=pick(self.labels),
            groups=pick(self.groups),
            metadata={name: pick(values) for name, values in self.metadata.items()},
            predefined_test=None if self.predefined_test is None else pick(self.predefined_test),
        )

    def class_counts(self) -> list[int]:
        counts = [0] * len(self.class_names)
        for label in self.labels:
            counts[label] += 1
        return counts
