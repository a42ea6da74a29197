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

from .errors import DataLayoutError

logger = logging.getLogger(__name__)

PART_NAMES = ("train", "validation", "test")


def check_fractions(test_fraction: float, val_fraction: float) -> None:
    for name, value in (("test_fraction", test_fraction), ("val_fraction", val_fraction)):
        if not 0.0 <= value < 1.0:
            raise ValueError(f"{name} must lie in [0, 1); got {value}.")
    if test_fraction + val_fraction >= 1.0:
        raise ValueError(
            f"test_fraction + val_fraction must stay below 1 to leave a train part; got {test_fraction} + {val_fraction}."
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
    targets = shares * group_class_counts.sum(axis=0)[None, :]
    safe_targets = np.where(targets > 0, targets, 1.0)
    total_targets = targets.sum(axis=1)
    filled = np.zeros_like(targets)
    part_of_group = np.empty(len(group_names), dtype=np.int64)
    for group in np.random.default_rng(seed).permutation(len(group_names)):
        counts = group_class_counts[group]
        weights = counts / counts.sum()
        deficit = targets - filled
        by_class = ((deficit / safe_targets) @ weights).round(9)
        overall = (1.0 - filled.sum(axis=1) / total_targets).round(9)
        absolute = deficit @ weights
        choice = max(range(len(active)), key=lambda p: (by_class[p], overall[p], absolute[p], -p))
        part_of_group[group] = choice
        filled[choice] += counts

    part_of_image = part_of_group[group_of_image]
    result = {part: np.array([], dtype=np.int64) for part in fractions}
    result.update({part: np.flatnonzero(part_of_image == number) for number, part in enumerate(active)})
    empty = [part for part in active if result[part].size == 0]
    if empty:
        raise DataLayoutError(f"The split left the part(s) {', '.join(empty)} empty; there are too few groups.")
    assert sum(indices.size for indices in result.values()) == labels_array.size
    return result


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
            logger.warning("Split part %r has no image of the class(es) %s (too few groups).", part, ", ".join(missing))
