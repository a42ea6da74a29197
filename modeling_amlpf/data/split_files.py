"""Where a loaded dataset came from, and its split as a file: publishing it, reloading it, checking a teacher's.

Provenance lives in the `DatasetInfo` of every part, so that it survives `map`, `select`, `with_transform` and
`save_to_disk`: `info.description` holds a human-readable summary followed by one line
`amlpf-provenance: <JSON>` (dataset, options, split seed and source, whether the split is group-disjoint, class
names, data root, scan report). `read_provenance(ds)` and `scan_report(ds)` read it back.

Two split file formats:
* JSON (`export_split` / `load_split_file`, written as `split.json` by the scripts): `{"dataset", "options",
  "split_seed", "split_source", "group_disjoint", "data_root", "class_names", ..., "part_digests",
  "parts": {"train": [[path, label, group], ...], "validation": [...], "test": [...]}, "fingerprints":
  {path: fingerprint}}`, paths relative to the data root, so the file can be published and reloaded on
  another machine with `load_histo_dataset(name, data_dir, split_file=PATH)`. `part_digests` (count and hash
  of each part) reveal a file edited after export; `fingerprints` (file size + hash of the first bytes) let
  `compare_with_training_split` tell a teacher trained on other data from a real leak.
* Reference style (`export_split_txt`, option `split_files=`): one file per part, lines
  `<image path> <integer label>`, paths absolute or relative to the data root.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from collections.abc import Sequence

from datasets import Dataset, DatasetDict

from .index import DataLayoutError, ImageIndex, nfc, raise_if_problems
from .scan import ScanReport
from .splits import PART_NAMES

logger = logging.getLogger(__name__)

SPLIT_FILE_FORMAT = "amlpf-split/2"
MARKER = "amlpf-provenance: "
FINGERPRINT_COLUMN = "fingerprint"


# ----------------------------------------------------------------------------------------------------------
# Provenance
# ----------------------------------------------------------------------------------------------------------


def describe(summary: str, provenance: dict) -> str:
    return f"{summary}\n{MARKER}{json.dumps(provenance, sort_keys=True, default=str)}"


def read_provenance(data: Dataset | DatasetDict) -> dict:
    """The provenance dict of a dataset (or of the first part of a DatasetDict) made by `load_histo_dataset`.

    Keys: dataset, options, split_seed, split_source, group_disjoint (True only when no patient/slide group is
    in two parts), class_names, group_kind, data_root, counts, scan.
    """
    dataset = next(iter(data.values())) if isinstance(data, DatasetDict) else data
    description = dataset.info.description or ""
    position = description.rfind(MARKER)
    if position < 0:
        raise ValueError(
            "This dataset carries no amlpf provenance; it was not made by modeling_amlpf.data.load_histo_dataset."
        )
    return json.loads(description[position + len(MARKER) :].splitlines()[0])


def scan_report(data: Dataset | DatasetDict) -> ScanReport:
    """The image-scan report of a loaded dataset: bad, missing and skipped files, small images, 8-bit copies."""
    return ScanReport.from_dict(read_provenance(data)["scan"])


# ----------------------------------------------------------------------------------------------------------
# JSON split files
# ----------------------------------------------------------------------------------------------------------


def _plain(dataset: Dataset) -> Dataset:
    """The dataset without any user transform (`with_transform` would alter the columns read)."""
    return dataset.with_format(None)


def _entries(dataset: Dataset) -> list[list]:
    """[path, label, group] rows."""
    plain = _plain(dataset)
    columns = zip(plain["path"], plain["label"], plain["group"])
    return [[path, int(label), group] for path, label, group in columns]


def _fingerprints(dataset: Dataset) -> dict[str, str]:
    """{path: content fingerprint}; empty for a dataset without the fingerprint column."""
    plain = _plain(dataset)
    if FINGERPRINT_COLUMN not in plain.column_names:
        return {}
    return {path: fingerprint for path, fingerprint in zip(plain["path"], plain[FINGERPRINT_COLUMN]) if fingerprint}


def part_digest(entries: Sequence[Sequence]) -> dict:
    """{"count", "sha1"} of a part's [path, label, group] entries, independent of their order."""
    lines = sorted(json.dumps([str(p), int(label), str(group)], ensure_ascii=False) for p, label, group in entries)
    return {"count": len(lines), "sha1": hashlib.sha1("\n".join(lines).encode("utf-8")).hexdigest()}


def split_file_changes(data: dict) -> dict[str, str]:
    """{part: what changed} between a split file's parts and the digests written with them (empty: unchanged,
    or a file without digests)."""
    written = data.get("part_digests")
    if not isinstance(written, dict):
        return {}
    changes = {}
    for part in dict.fromkeys([*written, *data["parts"]]):
        before = written.get(part) if isinstance(written.get(part), dict) else {"count": 0, "sha1": None}
        now = part_digest(data["parts"].get(part, []))
        if now == {"count": before.get("count"), "sha1": before.get("sha1")}:
            continue
        difference = now["count"] - int(before.get("count") or 0)
        changes[part] = (
            f"{before.get('count')} -> {now['count']} entries ({difference:+d})"
            if difference
            else f"same number of entries ({now['count']}), other entries"
        )
    return changes


def export_split(dataset_dict: DatasetDict, path: str | os.PathLike) -> str:
    """Write the split of a `load_histo_dataset` result as one publishable JSON file; returns its path.

    One entry per line, so the file diffs well. Skipped bad images, missing files and non-image files are
    listed under `excluded_bad_images`, `excluded_missing_files` and `skipped_non_images`.
    """
    provenance = read_provenance(dataset_dict)
    scan = ScanReport.from_dict(provenance["scan"])
    present = [name for name in PART_NAMES if name in dataset_dict]
    entries = {part: _entries(dataset_dict[part]) for part in present}
    fingerprints = {}
    for part in present:
        fingerprints.update(_fingerprints(dataset_dict[part]))
    header = {
        "format": SPLIT_FILE_FORMAT,
        "dataset": provenance["dataset"],
        "options": provenance["options"],
        "split_seed": provenance["split_seed"],
        "split_source": provenance["split_source"],
        "group_disjoint": provenance.get("group_disjoint", False),
        "data_root": provenance.get("data_root"),
        "class_names": provenance["class_names"],
        "excluded_bad_images": [entry[0] for entry in scan.bad_images],
        "excluded_missing_files": [entry[0] for entry in scan.missing_files],
        "skipped_non_images": list(scan.non_image_files),
        "part_digests": {part: part_digest(rows) for part, rows in entries.items()},
    }

    def dump(value) -> str:
        return json.dumps(value, ensure_ascii=False)

    parts = []
    for part, rows in entries.items():
        lines = ",\n".join(f"   {dump(entry)}" for entry in rows)
        parts.append(f"  {dump(part)}: [\n{lines}\n  ]" if lines else f"  {dump(part)}: []")
    lines = ["{", *(f" {dump(key)}: {dump(value)}," for key, value in header.items())]
    lines += [' "parts": {', ",\n".join(parts), " },"]
    printed = ",\n".join(f"  {dump(key)}: {dump(value)}" for key, value in fingerprints.items())
    lines += [f' "fingerprints": {{\n{printed}\n }}' if printed else ' "fingerprints": {}', "}"]
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
    """Read and validate a JSON split file written by `export_split`; warn when its parts were edited since."""
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
    for key in ("fingerprints", "part_digests"):
        if key in data and not isinstance(data[key], dict):
            problems.append(f"key {key!r} is not an object")
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
    changes = split_file_changes(data)
    if changes:
        logger.warning(
            "The split file %s differs from the split it was written as (parts changed since export: %s); "
            "it is used as it is now.",
            path,
            "; ".join(f"{part}: {change}" for part, change in changes.items()),
        )
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
        self.position = {nfc(path): i for i, path in enumerate(index.paths)}
        self.skipped = {nfc(path): path for path in skipped}

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
            key = None if relative is None else nfc(relative)
            if key in self.position:
                return "ok", self.position[key]
            if key in self.skipped:
                return "skipped", self.skipped[key]
        if all(relative is None for relative in relatives):
            return "outside", raw
        if not any(os.path.exists(candidate) for candidate in candidates):
            return "missing", raw
        return "unselected", raw


PROBLEM_TITLES = {
    "outside": "paths outside the data root",
    "missing": "paths of files that do not exist",
    "unselected": (
        "paths that exist but are not images of this dataset with these options (e.g. another magnification)"
    ),
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


# ----------------------------------------------------------------------------------------------------------
# Checking a teacher's split against this run's data
# ----------------------------------------------------------------------------------------------------------

COMPATIBLE, OTHER_DATA, LEAK = "compatible", "other_data", "leak"


@dataclasses.dataclass
class TrainingSplitCheck:
    """How the split a model (a teacher) was trained on relates to this run's data and split.

    Attributes:
        status: "compatible" (same data, and none of this run's test images is in the teacher's train or
            validation part), "other_data" (the teacher was trained on other images: no image in common) or
            "leak" (the teacher trained or selected on images of this run's test part).
        message: one paragraph for the log (compatible) or the error (otherwise), naming roots and examples.
        split_file: the teacher's split.json.
        teacher_root, data_root: the data roots recorded by the teacher's split file and by this run (None
            when unknown).
        shared_images: images of this run that the teacher's split file also holds (by content when
            `by_content`, else by path).
        leaked: (this run's test path, the teacher's path of the same image) of every leaked image.
        by_content: True when both sides have fingerprints; False for older split files (compared by path).
    """

    status: str
    message: str
    split_file: str
    teacher_root: str | None
    data_root: str | None
    shared_images: int
    leaked: list[tuple[str, str]]
    by_content: bool

    @property
    def ok(self) -> bool:
        return self.status == COMPATIBLE

    def raise_if_incompatible(self) -> None:
        """Raise a `DataLayoutError` with `message` unless the teacher is compatible."""
        if not self.ok:
            raise DataLayoutError(self.message)


def _teacher_parts(saved: dict) -> tuple[dict[str, str], set[str], dict[str, str]]:
    """({path: fingerprint} of all parts, paths of train+validation, {path: part})."""
    fingerprints = {nfc(path): value for path, value in (saved.get("fingerprints") or {}).items()}
    seen = {nfc(entry[0]) for part in ("train", "validation") for entry in saved["parts"].get(part, [])}
    part_of = {nfc(entry[0]): part for part, entries in saved["parts"].items() for entry in entries}
    return fingerprints, seen, part_of


def compare_with_training_split(split_json_path: str | os.PathLike, dataset_dict: DatasetDict) -> TrainingSplitCheck:
    """Compare the `split.json` a model was trained with (e.g. the teacher's) with this run's `DatasetDict`.

    Images are matched by content fingerprint, so equal file names in two cohorts never count as the same
    image, and a copy of the data under another root still does. Refuse with `raise_if_incompatible()`:

        check = compare_with_training_split(Path(teacher_dir) / "split.json", dd)
        check.raise_if_incompatible()
        logger.info(check.message)
    """
    split_json_path = os.fspath(split_json_path)
    saved = load_split_file(split_json_path)
    teacher_dir = os.path.dirname(os.path.abspath(split_json_path))
    teacher_root = saved.get("data_root")
    try:
        data_root = read_provenance(dataset_dict).get("data_root")
    except ValueError:
        data_root = None
    theirs, seen, part_of = _teacher_parts(saved)
    ours = {part: _fingerprints(dataset_dict[part]) for part in PART_NAMES if part in dataset_dict}
    ours = {part: {nfc(path): value for path, value in values.items()} for part, values in ours.items()}
    our_paths = {part: [nfc(path) for path in _plain(dataset_dict[part])["path"]] for part in ours}
    by_content = bool(theirs) and all(len(ours[part]) == len(our_paths[part]) for part in ours)
    roots = f"the teacher's data root {teacher_root or '(not recorded)'}; this run's {data_root or '(not recorded)'}"

    if by_content:
        path_of = {value: path for path, value in theirs.items()}
        our_all = {value for values in ours.values() for value in values.values()}
        shared = len(our_all & set(theirs.values()))
        seen_content = {theirs[path] for path in seen if path in theirs}
        our_training = {value for part in ("train", "validation") for value in ours.get(part, {}).values()}
        leaked = [
            (path, path_of[value])
            for path, value in ours.get("test", {}).items()
            if value in seen_content and value not in our_training
        ]
    else:
        shared = len({path for paths in our_paths.values() for path in paths} & set(part_of))
        our_training = {path for part in ("train", "validation") for path in our_paths.get(part, [])}
        leaked = [(path, path) for path in our_paths.get("test", []) if path in seen and path not in our_training]

    def result(status: str, message: str) -> TrainingSplitCheck:
        return TrainingSplitCheck(
            status, message, split_json_path, teacher_root, data_root, shared, leaked, by_content
        )

    comparison = "by content" if by_content else "by path (the teacher's split.json has no image fingerprints)"
    different_roots = teacher_root and data_root and os.path.abspath(teacher_root) != os.path.abspath(data_root)
    if shared == 0 and (by_content or different_roots):
        changed = "" if different_roots else f" (the files under {data_root} changed since the teacher was trained)"
        return result(
            OTHER_DATA,
            f"The teacher in {teacher_dir} was trained on other data{changed}: none of the "
            f"{len(part_of)} images in its split file {split_json_path} is among this run's "
            f"{sum(map(len, our_paths.values()))} images (compared {comparison}); {roots}. Train a teacher on "
            "this data first (train_teacher.py with the same --dataset, --data_dir and split options), or pass "
            "--teacher_model with the teacher trained on it.",
        )
    if leaked:
        examples = ", ".join(ours_path if ours_path == theirs_path else f"{ours_path} (= {theirs_path})"
                             for ours_path, theirs_path in leaked[:3])
        return result(
            LEAK,
            f"The teacher in {teacher_dir} was trained on {len(leaked)} image(s) of this run's test split "
            f"(compared {comparison}; in its train/validation parts), e.g. {examples}: train the teacher with the "
            f"same --dataset options and --split_seed, or give this run the teacher's split with --split_file "
            f"{split_json_path}.",
        )
    coverage = f"{shared} of this run's {sum(map(len, our_paths.values()))} images are in the teacher's split"
    note = f"; the teacher's copy of the data was at {teacher_root}" if different_roots else ""
    return result(
        COMPATIBLE,
        f"The teacher's split {split_json_path} matches this run's data ({coverage}, compared {comparison}{note}) "
        "and holds none of this run's test images in its train/validation parts.",
    )
