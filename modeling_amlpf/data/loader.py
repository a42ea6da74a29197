"""`load_histo_dataset`: one call from a folder as distributed to a group-disjoint `DatasetDict`.

Steps: resolve the data folder -> read the layout into an `ImageIndex` (paths, labels, groups) -> verify
every image decodes (cached scan, which also fingerprints each file and measures it) -> choose the split
(generated, official, or from split files) -> build one `Dataset` per part whose `image` column holds file
PATHS decoded lazily as RGB.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Sequence

from datasets import ClassLabel, Dataset, DatasetDict, DatasetInfo, Features, Image, Value

from . import demo
from ..models.image_decoding import DEFAULT_MAX_ASPECT_RATIO, DEFAULT_MAX_IMAGE_PIXELS, printable_path
from .index import (
    BadImageError,
    DataLayoutError,
    ImageIndex,
    bullet_list,
    describe_spellings,
    drop_duplicate_files,
    is_utf8_name,
    nfc,
    shown,
)
from .layouts import LAYOUTS
from .scan import ScanReport, scan_images
from .split_files import (
    FINGERPRINT_COLUMN,
    describe,
    load_split_file,
    parts_from_reference_files,
    parts_from_split_file,
    split_file_changes,
)
from .splits import PART_NAMES, check_disjoint, check_fractions, group_stratified_split, warn_missing_classes

logger = logging.getLogger(__name__)

DATASET_NAMES = ("chaoyang", "breakhis", "lunghist700", "imagefolder", "demo")
BAD_IMAGE_POLICIES = ("error", "skip")
DEFAULT_TEST_FRACTION = 0.2
DEFAULT_VAL_FRACTION = 0.1
_SPLIT_OPTIONS = ("test_fraction", "val_fraction", "split_files", "split_file")
OFFICIAL_SOURCE = "official test set, validation carved from official train"
EXTERNAL_COHORT_SOURCE = "external cohort: every image is a test image (no split)"
EXTERNAL_COHORT_HINT = (
    "To evaluate a trained model on every image of a folder (an external cohort), load it without a split: "
    "external_cohort=True (command line: --external_cohort with --do_train False --model_name_or_path DIR)."
)
DATA_DIR_ENV = "AMLPF_DATA_DIR"
DEFAULT_MIN_IMAGE_SIDE = 32


def _data_dir_candidates(name: str) -> list[str]:
    base = os.environ.get(DATA_DIR_ENV) or "data"
    names = [name, LAYOUTS[name].folder_name] if name in LAYOUTS else [name]
    return [os.path.abspath(os.path.join(base, folder)) for folder in dict.fromkeys(filter(None, names))]


def run_name(args) -> str:
    """Folder of a dataset/task under the output root, e.g. ``breakhis-binary-40x`` (works on a namespace too)."""
    parts = [args.dataset] + [v for v in (args.task, args.magnification, args.resolution) if v]
    return "-".join(str(p).lower() for p in parts)


def default_data_dir(name: str) -> str:
    """`$AMLPF_DATA_DIR/<name>` (else `./data/<name>`), or the folder the download unpacks to beside it
    (`LungHist700`, `BreaKHis_v1`, `chaoyang-data`) when only that exists."""
    candidates = _data_dir_candidates(name)
    return next((path for path in candidates if os.path.isdir(path)), candidates[0])


def data_root_tag(data_dir: str | os.PathLike) -> str:
    """A short name that is stable for one data folder and differs between folders: `<folder name>-<8 hex>`.

    The hex digits hash the folder's absolute, symlink-resolved path, so two cohorts with equal folder names
    still get different tags. Used to derive default output folders per data root (e.g. for `imagefolder`).
    """
    path = os.path.realpath(os.path.abspath(os.fspath(data_dir)))
    name = re.sub(r"[^\w.-]+", "_", nfc(os.path.basename(path.rstrip(os.sep)) or "root")).strip("._") or "data"
    return f"{name}-{hashlib.sha1(path.encode('utf-8', 'surrogateescape')).hexdigest()[:8]}"


def _check_name(name: str) -> str:
    key = str(name).strip().lower()
    if key not in DATASET_NAMES:
        raise ValueError(f"Unknown dataset {name!r}; valid names: {', '.join(DATASET_NAMES)}.")
    return key


def _resolve_data_dir(name: str, data_dir: str | os.PathLike | None) -> str:
    """The folder to read; `demo` data is generated on first use."""
    if name == "demo":
        return demo.ensure_demo_data(None if data_dir is None else os.fspath(data_dir))
    path = default_data_dir(name) if data_dir is None else os.path.abspath(os.fspath(data_dir))
    if not os.path.isdir(path):
        if data_dir is not None:
            where = f"The {name} data folder {path} (given as data_dir) does not exist."
        else:
            unpacked = LAYOUTS[name].folder_name
            where = (
                f"No {name} data folder found: looked for {' and '.join(_data_dir_candidates(name))} (the default "
                f"is ${DATA_DIR_ENV}/{name}, else ./data/{name}"
                + (f"; the name the download unpacks to, {unpacked}, works too)." if unpacked else ").")
            )
        raise FileNotFoundError(
            f"{where}\n"
            f"Expected layout:\n{LAYOUTS[name].expected_layout}\n"
            f"Point to it with --data_dir PATH on the command line, data_dir=PATH in Python, or set "
            f"{DATA_DIR_ENV} to a folder holding one sub-folder per dataset ({DATA_DIR_ENV}/{name})."
        )
    return path


def _layout_options(name: str, options: dict, saved_options: dict | None) -> dict:
    """The reader's keyword options: defaults, then a reloaded split file's, then the caller's."""
    if name == "demo":
        if options:
            raise ValueError(
                f"The demo dataset takes no options besides {', '.join(_SPLIT_OPTIONS)}; got {', '.join(options)}."
            )
        return {}
    accepted = LAYOUTS[name].options
    unknown = [key for key in options if key not in accepted]
    if unknown:
        raise ValueError(
            f"Unknown option(s) {', '.join(unknown)} for {name}; accepted: "
            f"{', '.join([*accepted, *_SPLIT_OPTIONS])}."
        )
    resolved = dict(accepted)
    for key, value in (saved_options or {}).items():
        if key in accepted:
            resolved[key] = value
    for key, value in options.items():
        value = os.fspath(value) if isinstance(value, os.PathLike) else value
        if saved_options and key in saved_options and saved_options[key] != value:
            logger.warning("Option %s=%r overrides %r from the split file.", key, value, saved_options[key])
        resolved[key] = value
    return resolved


def _read_index(name: str, folder: str, layout_options: dict) -> ImageIndex:
    if name == "demo":
        groups_csv = os.path.join(folder, demo.GROUPS_FILE)
        index = LAYOUTS["imagefolder"].reader(folder, class_names=demo.DEMO_CLASS_NAMES, groups_csv=groups_csv)
        index.summary = (
            "SYNTHETIC demo data (generated H&E-like tiles, NOT real histology): "
            f"{len(demo.DEMO_CLASS_NAMES)} classes, groups = synthetic patients"
        )
        index.group_kind = "synthetic patient"
        return index
    return LAYOUTS[name].reader(folder, **layout_options)


def _scan(
    index: ImageIndex, on_bad_image: str, min_image_side: int, limits: dict
) -> tuple[ImageIndex, list[str], list[str], ScanReport]:
    """Verify all images; raise on bad or missing ones or drop them (policy "skip").

    Returns (index, image files, fingerprints, report), the lists aligned with the returned index.
    """
    if index.non_images:
        logger.warning(
            "Skipping %d file(s) whose suffix is not an image format (they are listed in scan_report(dataset) "
            "and split.json): %s",
            len(index.non_images),
            shown(index.non_images),
        )
    # A name that is not UTF-8 cannot be stored (dataset column, split.json): a bad image, shown escaped.
    badly_named = [path for path in index.paths if not is_utf8_name(path)]
    if badly_named:
        index = index.subset([i for i, path in enumerate(index.paths) if is_utf8_name(path)])
    result = scan_images(index.root, index.paths, min_side=min_image_side, **limits)
    report = result.report
    report.bad_images[:0] = [
        (printable_path(path), "the file name is not valid UTF-8 (its bytes are shown as \\x.. escapes); rename it")
        for path in badly_named
    ]
    report.num_scanned += len(badly_named)
    report.missing_files = list(index.missing)
    report.non_image_files = [printable_path(path) for path in index.non_images]
    if (report.bad_images or report.missing_files) and on_bad_image == "error":
        sections, fixes = [], []
        if report.missing_files:
            sections.append(
                f"{len(report.missing_files)} image file(s) named by the label file are missing under {index.root}:\n"
                f"{bullet_list(f'{path}: {reason}' for path, reason in report.missing_files)}"
            )
            fixes.append("restore the missing files from the download (or delete their rows from the label file)")
        if report.bad_images:
            sections.append(
                f"{len(report.bad_images)} file(s) under {index.root} are not usable images:\n"
                f"{bullet_list(f'{path}: {reason}' for path, reason in report.bad_images)}"
            )
            fixes.append("remove or replace the unreadable ones")
        fix = " and ".join(fixes)
        raise BadImageError(
            "\n".join(sections) + f"\n{fix[0].upper()}{fix[1:]}, "
            'or leave them out with on_bad_image="skip" (command line: --on_bad_image skip); '
            "skipped files are listed in split.json.",
            [*report.missing_files, *report.bad_images],
        )
    if report.rgb8_copies:
        logger.info(
            "%d 16-bit/float/transparent images are read through 8-bit RGB copies in the cache.",
            len(report.rgb8_copies),
        )
    if report.small_images:
        logger.warning(
            "%d image(s) have a side below %d pixels (min_image_side) and carry little detail once upsized to the "
            "model's views: %s",
            len(report.small_images),
            min_image_side,
            shown([f"{path} ({size})" for path, size in report.small_images]),
        )
    if report.missing_files:
        report.skipped = True
        logger.warning(
            "Leaving out %d image(s) named by the label file but missing (on_bad_image='skip'); they are listed "
            "in scan_report(dataset) and split.json:\n%s",
            len(report.missing_files),
            bullet_list(f"{path}: {reason}" for path, reason in report.missing_files),
        )
    if not report.bad_images:
        return index, result.image_files, result.fingerprints, report
    report.skipped = True
    logger.warning(
        "Skipping %d unreadable file(s) (on_bad_image='skip'); they are listed in scan_report(dataset):\n%s",
        len(report.bad_images),
        bullet_list(f"{path}: {reason}" for path, reason in report.bad_images),
    )
    keep = [i for i, status in enumerate(result.status) if status != "bad"]
    return (
        index.subset(keep),
        [result.image_files[i] for i in keep],
        [result.fingerprints[i] for i in keep],
        report,
    )


def _carve_validation(
    index: ImageIndex, pool: Sequence[int], val_fraction: float, seed: int
) -> tuple[list[int], list[int]]:
    """Split `pool` (positions) into (train, validation), group-disjoint, validation ~ val_fraction of it."""
    pool = list(pool)
    if val_fraction == 0 or not pool:
        return pool, []
    found = group_stratified_split(
        [index.labels[i] for i in pool],
        [index.groups[i] for i in pool],
        {"train": 1.0 - val_fraction, "validation": val_fraction},
        seed,
        num_classes=len(index.class_names),
    )
    return [pool[i] for i in found["train"]], [pool[i] for i in found["validation"]]


def _make_parts(
    index: ImageIndex, given_dir: str, seed: int, split_options: dict, saved: dict | None, skipped: list[str]
) -> tuple[dict[str, list[int]], str]:
    """Positions of each part and a word for where the split came from."""
    if split_options.get("external_cohort"):
        return {"train": [], "validation": [], "test": list(range(len(index)))}, EXTERNAL_COHORT_SOURCE
    val_fraction = split_options["val_fraction"]
    if saved is not None or split_options.get("split_files") is not None:
        if saved is not None:
            listed, dropped = parts_from_split_file(saved, index, given_dir, skipped)
            source = "split_file"
        else:
            listed, dropped = parts_from_reference_files(split_options["split_files"], index, given_dir, skipped)
            source = "split_files"
        if dropped:
            logger.warning(
                "%d image(s) named by the split are unreadable or missing and left out: %s", len(dropped), dropped
            )
        if "validation" not in listed:
            listed["train"], listed["validation"] = _carve_validation(index, listed["train"], val_fraction, seed)
            source += " (validation carved from train)"
        unused = len(index) - sum(len(positions) for positions in listed.values())
        if unused:
            logger.warning("%d of %d images are in no part of the split and are not used.", unused, len(index))
        return {part: listed[part] for part in PART_NAMES}, source
    if index.predefined_test is not None:
        test = [i for i, is_test in enumerate(index.predefined_test) if is_test]
        official_train = [i for i, is_test in enumerate(index.predefined_test) if not is_test]
        train, validation = _carve_validation(index, official_train, val_fraction, seed)
        return {"train": train, "validation": validation, "test": test}, OFFICIAL_SOURCE
    test_fraction = split_options["test_fraction"]
    found = group_stratified_split(
        index.labels,
        index.groups,
        {"train": 1.0 - test_fraction - val_fraction, "validation": val_fraction, "test": test_fraction},
        seed,
        num_classes=len(index.class_names),
    )
    return {part: found[part].tolist() for part in PART_NAMES}, "generated"


def _refuse_whole_test_fraction(split_options: dict) -> None:
    """A test part of every image is the external-cohort mode, not a split: say so instead of a range error."""
    test_fraction = split_options.get("test_fraction")
    if test_fraction is not None and test_fraction >= 1.0:
        raise ValueError(
            f"test_fraction={test_fraction} leaves no image to train on: a split needs test_fraction below 1. "
            + EXTERNAL_COHORT_HINT
        )


def _check_parts(index: ImageIndex, parts: dict[str, list[int]], source: str) -> bool:
    """Assert the invariants of generated splits; report group overlap of given ones.

    Returns whether the split is group-disjoint: no group in two parts, and groups that are more than single
    images (an image-level split of patient data is not called group-disjoint).
    """
    placed = [i for positions in parts.values() for i in positions]
    if source in ("generated", OFFICIAL_SOURCE) and not len(placed) == len(set(placed)) == len(index):
        raise RuntimeError(f"Internal error: the split places {len(placed)} of {len(index)} images ({source}).")
    disjoint = True
    for (first, second), shared in check_disjoint(parts, index.groups).items():
        if not shared:
            continue
        disjoint = False
        message = f"{len(shared)} {index.group_kind} group(s) appear in both {first} and {second} ({source})"
        if source == "generated" or ({first, second} == {"train", "validation"} and "carved" in source):
            raise RuntimeError(f"Internal error: {message}.")
        logger.warning("%s: these parts are not group-disjoint.", message)
    warn_missing_classes(parts, index.labels, index.class_names)
    return disjoint and index.group_kind != "image"


def _check_saved_class_names(saved: dict, index: ImageIndex, path: str) -> None:
    """A split file's labels only mean something with the class names it was written with (compared in NFC)."""
    written = saved.get("class_names")
    if written is None or [nfc(str(name)) for name in written] == list(index.class_names):
        return
    message = (
        f"The split file {path} was written for the classes {written}, but the data in {index.root} "
        f"has {list(index.class_names)} (label order matters)."
    )
    differing = [
        describe_spellings([str(a), b]) for a, b in zip(written, index.class_names) if str(a) != b and nfc(str(a)) == b
    ]
    if differing:
        message += f" Some differ only by Unicode normalisation: {'; '.join(differing)}."
    raise DataLayoutError(message + " Load it with the same dataset options (class_names) it was exported with.")


def _build_dataset_dict(
    index: ImageIndex,
    image_files: list[str],
    fingerprints: list[str],
    parts: dict[str, list[int]],
    name: str,
    description: str,
) -> DatasetDict:
    features = Features(
        {
            "image": Image(mode="RGB"),
            "label": ClassLabel(names=list(index.class_names)),
            "group": Value("string"),
            "path": Value("string"),
            FINGERPRINT_COLUMN: Value("string"),
            **{column: index.metadata_features.get(column, Value("string")) for column in index.metadata},
        }
    )
    result = DatasetDict()
    for part in PART_NAMES:
        positions = parts[part]
        columns = {
            "image": [image_files[i] for i in positions],
            "label": [index.labels[i] for i in positions],
            "group": [index.groups[i] for i in positions],
            "path": [index.paths[i] for i in positions],
            FINGERPRINT_COLUMN: [fingerprints[i] for i in positions],
            **{column: [values[i] for i in positions] for column, values in index.metadata.items()},
        }
        info = DatasetInfo(description=description, dataset_name=name, features=features)
        result[part] = Dataset.from_dict(columns, features=features, info=info, split=part)
    return result


def load_histo_dataset(
    name: str,
    data_dir: str | os.PathLike | None = None,
    *,
    split_seed: int = 1,
    on_bad_image: str = "error",
    min_image_side: int = DEFAULT_MIN_IMAGE_SIDE,
    max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
    max_aspect_ratio: float | None = DEFAULT_MAX_ASPECT_RATIO,
    external_cohort: bool = False,
    **options,
) -> DatasetDict:
    """Load a histopathology dataset as a `DatasetDict` with group-disjoint `train`/`validation`/`test`.

    Args:
        name: one of `DATASET_NAMES` ("chaoyang", "breakhis", "lunghist700", "imagefolder", "demo"; demo is
            SYNTHETIC data generated locally).
        data_dir: the dataset folder as distributed. None: `$AMLPF_DATA_DIR/<name>` or `./data/<name>`, or
            beside it the folder the download unpacks to (`LungHist700`, `BreaKHis_v1`, `chaoyang-data`);
            for demo the cache (`$AMLPF_CACHE/demo` or `~/.cache/amlpf/demo`).
        split_seed: seed of the generated split (seeds 1..10 give ten different splits).
        on_bad_image: "error" (default) raises one `BadImageError` naming every unreadable file and every
            file a label file names that is missing; "skip" leaves them out and records them in
            `scan_report(dataset)` (and in `split.json`).
        min_image_side: images with a side below this many pixels are named in a warning and in
            `scan_report(dataset).small_images` (still used); 0 turns the check off.
        max_image_pixels, max_aspect_ratio: images with more pixels, or a long side more than this many times
            the short one, are bad images (named, or left out with on_bad_image="skip"), found from the size
            the file declares, without decoding it: their views would take gigabytes of memory. The defaults
            are the image processor's (40 Mpx, 16:1), far beyond any histology tile; 0 turns a limit off.
        external_cohort: no split: every image goes to `test` (`train` and `validation` are empty), to
            evaluate a trained model on another cohort. Split options are refused with it.
        **options: per dataset (see the layout modules): chaoyang `protocol` ("resplit", the slide-disjoint
            default | "official", Chaoyang's own test set, which shares slides with train);
            breakhis `task` ("8class" | "binary"), `magnification` ("40X", ... or None); lunghist700 `task`
            ("3class" | "7class"), `resolution` ("20x" | "40x" | None); imagefolder `class_names`,
            `groups_csv`. For all: `test_fraction` (0.2), `val_fraction` (0.1; with an official test set or
            given split files it is the share carved out of train), `split_files` ({"train": path,
            "test": path, "validation": path (optional)}, reference-style `<path> <label>` lines),
            `split_file` (a JSON file written by `export_split`, reloaded exactly).

    Columns: `image` (file path, decoded lazily as RGB), `label` (ClassLabel, canonical order), `group`,
    `path` (relative to the data root), `fingerprint` (file size + hash of its first 64 KiB) and per-dataset
    metadata. Files whose suffix is not an image format are skipped with one warning. Provenance (options,
    seed, whether the split is group-disjoint, data root, scan report) travels in `info.description`; read it
    with `read_provenance` / `scan_report`.
    """
    name = _check_name(name)
    if on_bad_image not in BAD_IMAGE_POLICIES:
        raise ValueError(f"on_bad_image must be one of {', '.join(BAD_IMAGE_POLICIES)}; got {on_bad_image!r}.")
    split_options = {key: options.pop(key) for key in _SPLIT_OPTIONS if key in options}
    if external_cohort:
        given = [key for key, value in split_options.items() if value is not None]
        if given:
            raise ValueError(
                f"external_cohort=True evaluates every image without a split; it cannot be combined with "
                f"{', '.join(given)} (command line: drop --{' / --'.join(given)} or --external_cohort)."
            )
    _refuse_whole_test_fraction(split_options)
    saved = load_split_file(split_options["split_file"]) if split_options.get("split_file") is not None else None
    if saved is not None and saved["dataset"] != name:
        raise ValueError(f"The split file {split_options['split_file']} is for {saved['dataset']!r}, not {name!r}.")
    layout_options = _layout_options(name, options, saved["options"] if saved else None)
    official_test = name == "chaoyang" and layout_options["protocol"] == "official"
    given_split = saved is not None or split_options.get("split_files") is not None
    if official_test and not given_split and split_options.get("test_fraction") is not None:
        raise ValueError(
            "test_fraction has no effect with Chaoyang protocol='official' (the official test set is used); "
            "use protocol='resplit'."
        )
    saved_options = saved["options"] if saved else {}
    split_options.setdefault("test_fraction", saved_options.get("test_fraction", DEFAULT_TEST_FRACTION))
    split_options.setdefault("val_fraction", saved_options.get("val_fraction", DEFAULT_VAL_FRACTION))
    check_fractions(split_options["test_fraction"], split_options["val_fraction"])
    split_options["external_cohort"] = external_cohort

    folder = _resolve_data_dir(name, data_dir)
    index = _read_index(name, folder, layout_options)
    if len(index.class_names) < 2 and not external_cohort:
        raise DataLayoutError(
            f"{folder} holds {len(index.class_names)} class(es) ({', '.join(map(repr, index.class_names)) or 'none'}): "
            "a classifier needs at least two (with one it would silently train as a regression). Add the other "
            f"class folder(s) or the dataset options that select them. {EXTERNAL_COHORT_HINT}"
        )
    index = drop_duplicate_files(index)
    if saved is not None:
        _check_saved_class_names(saved, index, split_options["split_file"])
    limits = {"max_pixels": max_image_pixels, "max_aspect_ratio": max_aspect_ratio}
    index, image_files, fingerprints, report = _scan(index, on_bad_image, min_image_side, limits)
    skipped = [path for path, _ in [*report.bad_images, *report.missing_files]]
    parts, source = _make_parts(index, folder, split_seed, split_options, saved, skipped)
    edited = split_file_changes(saved) if saved is not None else {}
    if edited:
        source += f" (edited after export: {', '.join(edited)})"
    group_disjoint = _check_parts(index, parts, source)

    counts = {part: len(positions) for part, positions in parts.items()}
    shown_name = "demo (SYNTHETIC data)" if name == "demo" else name
    logger.info("%s: %d images, split %s (seed %d): %s", shown_name, len(index), source, split_seed, counts)
    if external_cohort:
        split_settings = {"external_cohort": True}
    else:
        split_settings = {
            "val_fraction": split_options["val_fraction"],
            **({} if official_test else {"test_fraction": split_options["test_fraction"]}),
        }
    provenance = {
        "dataset": name,
        "options": {**layout_options, **split_settings},
        "split_seed": saved.get("split_seed", split_seed) if saved else split_seed,
        "split_source": source,
        "group_disjoint": group_disjoint,
        "class_names": list(index.class_names),
        "group_kind": index.group_kind,
        "data_root": index.root,
        "counts": counts,
        "scan": report.to_dict(),
    }
    summary = (
        f"{index.summary}. Split: {source}, seed {provenance['split_seed']}, "
        f"{'group-disjoint' if group_disjoint else 'NOT group-disjoint'}; images per part {counts}; "
        f"unreadable or missing images skipped: {len(skipped)}."
    )
    return _build_dataset_dict(index, image_files, fingerprints, parts, name, describe(summary, provenance))
