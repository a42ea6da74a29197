"""Group-disjoint, class-stratified splits that depend only on the data and a seed.

Groups (patients, slides) are visited in a seeded random order and each goes, whole, to the part whose
class counts lie furthest below that part's target, measured on the classes the group contains:
score(part) = sum_c share_c(group) * (target[part, c] - filled[part, c]) / target[part, c].
Ties go to the part furthest below its overall size target, then to the larger absolute deficit. A part
that holds nothing scores the maximum on both, so the first groups go to distinct parts and no part with a
positive share stays empty while there are at least as many groups as parts. No group can end in two
parts, and a different seed gives a different visiting order and hence a different split.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from .index import DataLayoutError

logger = logging.getLogger(__name__)

PART_NAMES = ("train", "validation", "test")


def check_fractions(test_fraction: float, val_fraction: float) -> None:
    for name, value in (("test_fraction", test_fraction), ("val_fraction", val_fraction)):
        if not 0.0 <= value < 1.0:
            raise ValueError(f"{name} must lie in [0, 1); got {value}.")
    if test_fraction + val_fraction >= 1.0:
        raise ValueError(
            "test_fraction + val_fraction must stay below 1 to leave a train part; "
            f"got {test_fraction} + {val_fraction}."
        )


def group_stratified_split(
    labels: Sequence[int],
    groups: Sequence[str],
    fractions: dict[str, float],
    seed: int,
    num_classes: int | None = None,
) -> dict[str, np.ndarray]:
    """Positions per part (sorted), every position in exactly one part, no group in two parts.

    `fractions` maps part names to shares of the images (they should sum to 1; parts with share 0 come back
    empty). Raises `DataLayoutError` when there are fewer groups than parts with a positive share.
    """
    labels_array = np.asarray(labels, dtype=np.int64)
    if labels_array.size == 0:
        raise DataLayoutError("Cannot split an empty dataset.")
    num_classes = int(labels_array.max()) + 1 if num_classes is None else num_classes
    group_names, group_of_image = np.unique(np.asarray(groups, dtype=object).astype(str), return_inverse=True)
    group_class_counts = np.zeros((len(group_names), num_classes))
    np.add.at(group_class_counts, (group_of_image, labels_array), 1.0)

    active = [part for part, share in fractions.items() if share > 0]
    if len(group_names) < len(active):
        raise DataLayoutError(
            f"Only {len(group_names)} group(s) for {len(active)} group-disjoint parts ({', '.join(active)}); "
            "add data, or set val_fraction=0 / provide split files."
        )
    shares = np.array([fractions[part] for part in active])[:, None]
    part_of_group = _assign_groups(
        group_class_counts, shares * group_class_counts.sum(axis=0)[None, :], np.random.default_rng(seed)
    )

    part_of_image = part_of_group[group_of_image]
    result = {part: np.array([], dtype=np.int64) for part in fractions}
    result.update({part: np.flatnonzero(part_of_image == number) for number, part in enumerate(active)})
    empty = [part for part in active if result[part].size == 0]
    if empty:
        raise DataLayoutError(f"The split left the part(s) {', '.join(empty)} empty; there are too few groups.")
    return result


def _assign_groups(group_class_counts: np.ndarray, targets: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The greedy pass of the module docstring: the part index of every group.

    Plain Python over each group's non-zero classes: with a handful of parts this is several times faster
    than numpy on tiny arrays, which matters for 100k singleton groups.
    """
    num_parts = targets.shape[0]
    target = targets.tolist()
    filled = [[0.0] * targets.shape[1] for _ in range(num_parts)]
    total_target = targets.sum(axis=1).tolist()
    total_filled = [0.0] * num_parts
    part_of_group = np.empty(len(group_class_counts), dtype=np.int64)
    for group in rng.permutation(len(group_class_counts)).tolist():
        row = group_class_counts[group]
        present = [(int(c), float(row[c])) for c in np.flatnonzero(row)]
        size = sum(count for _, count in present)
        best_key, best_part = None, 0
        for part in range(num_parts):
            by_class = absolute = 0.0
            for c, count in present:
                deficit = target[part][c] - filled[part][c]
                by_class += count / size * (deficit / target[part][c] if target[part][c] > 0 else deficit)
                absolute += count / size * deficit
            overall = 1.0 - total_filled[part] / total_target[part]
            key = (round(by_class, 9), round(overall, 9), absolute)
            if best_key is None or key > best_key:  # strict: ties keep the earlier part
                best_key, best_part = key, part
        part_of_group[group] = best_part
        for c, count in present:
            filled[best_part][c] += count
        total_filled[best_part] += size
    return part_of_group


def check_disjoint(parts: dict[str, Sequence[int]], groups: Sequence[str]) -> dict[tuple[str, str], set[str]]:
    """Groups shared by each pair of parts (empty sets when the split is group-disjoint)."""
    group_sets = {part: {groups[i] for i in positions} for part, positions in parts.items()}
    names = list(parts)
    return {(a, b): group_sets[a] & group_sets[b] for k, a in enumerate(names) for b in names[k + 1 :]}


def warn_missing_classes(parts: dict[str, Sequence[int]], labels: Sequence[int], class_names: Sequence[str]) -> None:
    """Log (not raise) when a non-empty part lacks a class: small groups counts can make that unavoidable."""
    for part, positions in parts.items():
        if len(positions) == 0:
            continue
        present = {labels[i] for i in positions}
        missing = [name for label, name in enumerate(class_names) if label not in present]
        if missing:
            logger.warning(
                "Split part %r has no image of the class(es) %s (too few groups).", part, ", ".join(missing)
            )
