"""Split files: publishing the split used, reloading it, and honouring reference-style split lists.

Two formats:
* JSON (`export_split` / `load_split_file`): `{"dataset", "options", "split_seed", "class_names",
  "parts": {"train": [[path, label, group], ...], "validation": [...], "test": [...]}}`, paths relative to
  the data root, so the file can be published and reloaded on another machine with
  `load_histo_dataset(name, data_dir, split_file=PATH)`.
* Reference style (`export_split_txt`, option `split_files=`): one file per part, lines
  `<image path> <integer label>`, paths absolute or relative to the data root.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

from datasets import Dataset, DatasetDict

from .errors import DataLayoutError, raise_if_problems
from .index import ImageIndex
from .provenance import read_provenance
from .splits import PART_NAMES

SPLIT_FILE_FORMAT = "amlpf-split/1"


def _entries(dataset: Dataset) -> list[list]:
    """[path, label, group] rows, read without any user transform (`with_transform` would alter them)."""
    plain = dataset.with_format(None)
    columns = zip(plain["path"], plain["label"], plain["group"])
    return [[path, int(label), group] for path, label, group in columns]


def export_split(dataset_dict: DatasetDict, path: str | os.PathLike) -> str:
    """Write the split of a `load_histo_dataset` result as one publishable JSON file; returns its path.

    One entry per line, so the file diffs well. Skipped bad images are listed under `excluded_bad_images`.
    """
    provenance = read_provenance(dataset_dict)
    header = {
        "format": SPLIT_FILE_FORMAT,
        "dataset": provenance["dataset"],
        "options": provenance["options"],
        "split_seed": provenance["split_seed"],
        "split_source": provenance["split_source"],
        "class_names": provenance["class_names"],
        "excluded_bad_images": [entry[0] for entry in provenance["scan"]["bad_images"]],
    }
    parts = []
    for part in (name for name in PART_NAMES if name in dataset_dict):
        rows = ",\n".join(f"   {json.dumps(entry)}" for entry in _entries(dataset_dict[part]))
        parts.append(f"  {json.dumps(part)}: [\n{rows}\n  ]" if rows else f"  {json.dumps(part)}: []")
    lines = ["{", *(f" {json.dumps(key)}: {json.dumps(value)}," for key, value in header.items())]
    lines += [' "parts": {', ",\n".join(parts), " }", "}"]
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")
    return path


def export_split_txt(dataset_dict: DatasetDict, out_dir: str | os.PathLike) -> list[str]:
    """Write reference-style `train.txt`, `validation.txt`, `test.txt` (`<relative path> <label>` lines)."""
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    written = []
    for part in PART_NAMES:
        if part not in dataset_dict:
            continue
        target = os.path.join(out_dir, f"{part}.txt")
        with open(target, "w", encoding="utf-8") as handle:
            for path, label, _ in _entries(dataset_dict[part]):
                handle.write(f"{path} {label}\n")
        written.append(target)
    return written


def load_split_file(path: str | os.PathLike) -> dict:
    """Read and validate a JSON split file written by `export_split`."""
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except FileNotFoundError as error:
        raise FileNotFoundError(f"Split file {path} does not exist.") from error
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DataLayoutError(f"Split file {path} is not valid JSON ({error}).") from error
    problems: list[str] = []
    if not isinstance(data, dict):
        raise DataLayoutError(f"Split file {path} must hold a JSON object (see export_split).")
    for key, kind in (("dataset", str), ("options", dict), ("parts", dict)):
        if not isinstance(data.get(key), kind):
            problems.append(f"key {key!r} missing or not a {kind.__name__}")
    parts = data.get("parts") if isinstance(data.get("parts"), dict) else {}
    allowed = ", ".join(PART_NAMES)
    problems += [f"unknown part {part!r} (allowed: {allowed})" for part in parts if part not in PART_NAMES]
    problems += [f"part {part!r} missing" for part in ("train", "test") if part not in parts]
    for part, entries in parts.items():
        if not isinstance(entries, list):
            problems.append(f"part {part!r} is not a list")
            continue
        problems += [
            f"{part}[{number}]: {entry!r} is not [path, integer label, group]"
            for number, entry in enumerate(entries)
            if not (
                isinstance(entry, list)
                and len(entry) == 3
                and isinstance(entry[0], str)
                and isinstance(entry[1], int)
                and not isinstance(entry[1], bool)
                and isinstance(entry[2], str)
            )
        ]
    raise_if_problems({"problems": problems}, f"Split file {path} is malformed.")
    return data


def read_reference_split(path: str | os.PathLike) -> tuple[list[tuple[int, str, int]], list[str]]:
    """Parse `<path> <integer label>` lines: ([(line number, path, label)], malformed line descriptions)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Split file {path} does not exist.")
    entries, malformed = [], []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            pieces = text.rsplit(None, 1)
            try:
                entries.append((number, pieces[0], int(pieces[1])))
            except (IndexError, ValueError):
                malformed.append(f"{path}:{number}: {text!r} is not '<path> <integer label>'")
    return entries, malformed


class PathResolver:
    """Maps paths from split files (absolute, or relative to the data root or to the folder the user gave)
    to positions in an index, and explains the ones it cannot map."""

    def __init__(self, index: ImageIndex, given_dir: str, skipped: Sequence[str] = ()):
        self.root = os.path.abspath(index.root)
        self.real_root = os.path.realpath(self.root)
        self.bases = list(dict.fromkeys([self.root, os.path.abspath(given_dir)]))
        self.position = {path: i for i, path in enumerate(index.paths)}
        self.skipped = set(skipped)

    def _relative(self, absolute: str) -> str | None:
        for root, candidate in ((self.root, absolute), (self.real_root, os.path.realpath(absolute))):
            if candidate.startswith(root + os.sep):
                return candidate[len(root) + 1 :].replace(os.sep, "/")
        return None

    def resolve(self, raw: str) -> tuple[str, int | str]:
        """("ok", position) | ("skipped", relative path) | (problem kind, description)."""
        text = raw.replace("\\", "/") if os.sep == "/" else raw
        bases = [""] if os.path.isabs(text) else self.bases
        candidates = [os.path.normpath(os.path.join(base, text)) for base in bases]
        relatives = [self._relative(candidate) for candidate in candidates]
        for relative in relatives:
            if relative in self.position:
                return "ok", self.position[relative]
            if relative in self.skipped:
                return "skipped", relative
        if all(relative is None for relative in relatives):
            return "outside", raw
        if not any(os.path.exists(candidate) for candidate in candidates):
            return "missing", raw
        return "unselected", raw


PROBLEM_TITLES = {
    "outside": "paths outside the data root",
    "missing": "paths of files that do not exist",
    "unselected": "paths that exist but are not images of this dataset with these options (e.g. another magnification)",
    "label_range": "labels out of range",
    "label_mismatch": "labels that disagree with the dataset's own label (mixed class orders?)",
    "duplicate": "images listed more than once",
    "malformed": "malformed lines",
}


def _collect_parts(
    listed: dict[str, list[tuple[str, str, int]]], index: ImageIndex, resolver: PathResolver
) -> tuple[dict[str, list[int]], list[str]]:
    """Positions per part from (where, raw path, label) entries; every problem is named before raising."""
    problems: dict[str, list[str]] = {title: [] for title in PROBLEM_TITLES.values()}
    parts: dict[str, list[int]] = {}
    first_seen: dict[int, str] = {}
    dropped: list[str] = []
    num_classes = len(index.class_names)
    for part, entries in listed.items():
        parts[part] = []
        for where, raw, label in entries:
            kind, found = resolver.resolve(raw)
            if kind == "skipped":
                dropped.append(found)
                continue
            if kind != "ok":
                problems[PROBLEM_TITLES[kind]].append(f"{where}: {found}")
                continue
            if not 0 <= label < num_classes:
                valid = f"valid 0-{num_classes - 1}"
                problems[PROBLEM_TITLES["label_range"]].append(f"{where}: {raw} label {label} ({valid})")
            elif label != index.labels[found]:
                expected = f"{index.labels[found]} ({index.class_names[index.labels[found]]})"
                mismatch = f"{where}: {raw} label {label}, dataset says {expected}"
                problems[PROBLEM_TITLES["label_mismatch"]].append(mismatch)
            elif found in first_seen:
                problems[PROBLEM_TITLES["duplicate"]].append(f"{where}: {raw} (also {first_seen[found]})")
            else:
                first_seen[found] = where
                parts[part].append(found)
    raise_if_problems(problems, f"The split entries do not match the data in {index.root}.")
    return parts, dropped


def parts_from_reference_files(
    split_files: dict[str, str | os.PathLike], index: ImageIndex, given_dir: str, skipped: Sequence[str]
) -> tuple[dict[str, list[int]], list[str]]:
    """Positions per part named by reference-style files; also the listed paths dropped as bad images."""
    unknown = [part for part in split_files if part not in PART_NAMES]
    missing = [part for part in ("train", "test") if part not in split_files]
    if unknown or missing:
        raise ValueError(
            f"split_files needs the keys train and test (validation optional); unknown: {unknown or 'none'}, "
            f"missing: {missing or 'none'}."
        )
    listed, malformed = {}, []
    for part, path in split_files.items():
        entries, bad_lines = read_reference_split(path)
        listed[part] = [(f"{os.fspath(path)}:{number}", raw, label) for number, raw, label in entries]
        malformed += bad_lines
    raise_if_problems({PROBLEM_TITLES["malformed"]: malformed}, "Some split files have malformed lines.")
    return _collect_parts(listed, index, PathResolver(index, given_dir, skipped))


def parts_from_split_file(
    data: dict, index: ImageIndex, given_dir: str, skipped: Sequence[str]
) -> tuple[dict[str, list[int]], list[str]]:
    """Positions per part of a JSON split file (see `load_split_file`)."""
    listed = {
        part: [(f"{part}[{number}]", path, label) for number, (path, label, _) in enumerate(entries)]
        for part, entries in data["parts"].items()
    }
    return _collect_parts(listed, index, PathResolver(index, given_dir, skipped))
