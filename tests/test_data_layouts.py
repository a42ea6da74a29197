"""Each dataset layout, read from a look-alike tree: counts, class order, groups, metadata, split parts."""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import unicodedata
from collections import Counter

import pytest
from data_trees import (
    BREAKHIS_CLASSES,
    CHAOYANG_CLASSES,
    LUNG_FOLDERS,
    LUNG_THREE_CLASSES,
    make_breakhis_tree,
    make_chaoyang_tree,
    make_imagefolder_tree,
    make_lunghist700_tree,
)
from datasets import Image as ImageFeature
from datasets import load_from_disk

from modeling_amlpf.data import (
    DATASET_NAMES,
    BadImageError,
    DataLayoutError,
    export_split,
    load_histo_dataset,
    read_provenance,
    scan_report,
)

PARTS = ("train", "validation", "test")


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("AMLPF_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("AMLPF_DATA_DIR", raising=False)


def rows(dataset_dict):
    """(path, label, group) of every image, per part."""
    return {part: list(zip(ds["path"], ds["label"], ds["group"])) for part, ds in dataset_dict.items()}


def assert_matches_tree(dataset_dict, tree, group_disjoint=("train", "validation", "test")):
    """Every image of the tree lands in exactly one part with its label and group; parts share no group."""
    assert list(dataset_dict) == list(PARTS)
    seen = [entry for part_rows in rows(dataset_dict).values() for entry in part_rows]
    assert len(seen) == tree.num_images == len({path for path, _, _ in seen})
    assert {path: (label, group) for path, label, group in seen} == {
        path: (tree.labels[path], tree.groups[path]) for path in tree.labels
    }
    groups = {part: set(ds["group"]) for part, ds in dataset_dict.items()}
    for i, first in enumerate(group_disjoint):
        for second in group_disjoint[i + 1 :]:
            assert not groups[first] & groups[second], (first, second)
    for part in PARTS:
        assert dataset_dict[part].features["label"].names == tree.class_names


def test_unknown_name_lists_the_valid_ones(tmp_path):
    with pytest.raises(ValueError) as error:
        load_histo_dataset("kather", tmp_path)
    for name in DATASET_NAMES:
        assert name in str(error.value)


def test_missing_folder_names_path_layout_and_how_to_fix(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError) as error:
        load_histo_dataset("breakhis")
    message = str(error.value)
    assert str(tmp_path / "data" / "breakhis") in message
    assert "histology_slides/breast" in message and "--data_dir" in message and "AMLPF_DATA_DIR" in message


def test_default_data_dir_comes_from_environment(tmp_path, monkeypatch):
    tree = make_lunghist700_tree(tmp_path / "store")
    os.rename(tree.data_dir, tmp_path / "store" / "lunghist700")
    monkeypatch.setenv("AMLPF_DATA_DIR", str(tmp_path / "store"))
    assert sum(len(ds) for ds in load_histo_dataset("lunghist700").values()) == tree.num_images


def test_unknown_option_is_rejected_with_the_accepted_ones(tmp_path):
    tree = make_lunghist700_tree(tmp_path)
    with pytest.raises(ValueError, match="magnification.*accepted: task, resolution"):
        load_histo_dataset("lunghist700", tree.data_dir, magnification="40X")


# --- Chaoyang -----------------------------------------------------------------------------------------------


def test_chaoyang_official_protocol(tmp_path):
    tree = make_chaoyang_tree(tmp_path)
    dd = load_histo_dataset("chaoyang", tree.data_dir, protocol="official")
    # Official test kept whole; validation carved slide-disjointly from official train; test shares slides.
    assert_matches_tree(dd, tree, group_disjoint=("train", "validation"))
    official = tree.extra["official_split"]
    assert sorted(dd["test"]["path"]) == sorted(p for p, part in official.items() if part == "test")
    assert set(dd["train"]["official_split"]) == set(dd["validation"]["official_split"]) == {"train"}
    assert set(dd["train"]["group"]) & set(dd["test"]["group"]), "the official split is known to share slides"
    assert len(dd["validation"]) > 0
    # Slide ids keep their "_" and "-" parts.
    assert {"537688_2", "538844-2", "542630-3"} <= set(dd["train"]["group"]) | set(dd["validation"]["group"])
    assert dd["train"].features["label"].names == CHAOYANG_CLASSES
    assert read_provenance(dd)["group_disjoint"] is False  # cards must never call this split group-disjoint


def test_chaoyang_resplit_is_slide_disjoint(tmp_path):
    tree = make_chaoyang_tree(tmp_path)
    dd = load_histo_dataset("chaoyang", tree.data_dir, protocol="resplit", split_seed=4)
    assert_matches_tree(dd, tree)
    assert read_provenance(dd)["options"]["protocol"] == "resplit"


def test_chaoyang_accepts_the_parent_folder(tmp_path):
    tree = make_chaoyang_tree(tmp_path)
    dd = load_histo_dataset("chaoyang", tree.data_dir.parent)
    assert sum(map(len, dd.values())) == tree.num_images


def test_chaoyang_test_fraction_conflicts_with_official_protocol(tmp_path):
    tree = make_chaoyang_tree(tmp_path)
    with pytest.raises(ValueError, match="resplit"):
        load_histo_dataset("chaoyang", tree.data_dir, protocol="official", test_fraction=0.3)


# --- BreaKHis -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("doubled_root", [False, True])
@pytest.mark.parametrize("point_at", ["BreaKHis_v1", "parent", "breast"])
def test_breakhis_roots(tmp_path, doubled_root, point_at):
    tree = make_breakhis_tree(tmp_path, doubled_root=doubled_root, images_per_magnification=1)
    breast = (tree.data_dir / "BreaKHis_v1" if doubled_root else tree.data_dir) / "histology_slides" / "breast"
    data_dir = {"BreaKHis_v1": tree.data_dir, "parent": tree.data_dir.parent, "breast": breast}[point_at]
    dd = load_histo_dataset("breakhis", data_dir)
    assert_matches_tree(dd, tree)
    assert read_provenance(dd)["data_root"] == str(breast)


def test_breakhis_groups_by_numeric_root_and_metadata(tmp_path):
    tree = make_breakhis_tree(tmp_path)
    dd = load_histo_dataset("breakhis", tree.data_dir, split_seed=2)
    assert_matches_tree(dd, tree)
    everything = {}
    for ds in dd.values():
        for row in ds.remove_columns("image"):
            everything[row["path"]] = row
    # 21998AB (fibroadenoma) and 21998CD (ductal) are one group; so is 12204 under two subtypes.
    labels_of_group = {}
    for row in everything.values():
        labels_of_group.setdefault(row["group"], set()).add(row["label"])
    assert labels_of_group["21998"] == {1, 4} and labels_of_group["12204"] == {5, 6}
    for path, row in everything.items():
        assert row["magnification"] == tree.extra["magnification"][path]
        assert row["superclass"] == tree.extra["superclass"][path]
        assert row["binary_label"] == (row["superclass"] == "malignant")
        assert row["subtype"] == BREAKHIS_CLASSES[row["label"]]
    assert dd["train"].features["label"].names == BREAKHIS_CLASSES


def test_breakhis_binary_task_and_magnification_filter(tmp_path):
    tree = make_breakhis_tree(tmp_path)
    dd = load_histo_dataset("breakhis", tree.data_dir, task="binary", magnification="40x")
    paths = [p for ds in dd.values() for p in ds["path"]]
    expected = [p for p, mag in tree.extra["magnification"].items() if mag == "40X"]
    assert sorted(paths) == sorted(expected)
    assert dd["test"].features["label"].names == ["benign", "malignant"]
    for ds in dd.values():
        for path, label in zip(ds["path"], ds["label"]):
            assert label == (tree.extra["superclass"][path] == "malignant")
        assert set(ds["magnification"]) == {"40X"}
    with pytest.raises(ValueError, match="40X, 100X, 200X, 400X"):
        load_histo_dataset("breakhis", tree.data_dir, magnification="60X")


def test_breakhis_unknown_folders_are_named(tmp_path):
    tree = make_breakhis_tree(tmp_path, patients_per_subtype=1, images_per_magnification=1)
    breast = tree.data_dir / "histology_slides" / "breast"
    (breast / "benign" / "SOB" / "lipoma" / "SOB_B_L_14-1").mkdir(parents=True)
    patient = next((breast / "malignant" / "SOB" / "ductal_carcinoma").iterdir())
    (patient / "35X").mkdir()
    with pytest.raises(DataLayoutError) as error:
        load_histo_dataset("breakhis", tree.data_dir)
    assert "benign/SOB/lipoma" in str(error.value) and f"{patient.name}/35X" in str(error.value)


# --- LungHist700 --------------------------------------------------------------------------------------------


def test_lunghist700_three_classes_in_amlpf_order(tmp_path):
    tree = make_lunghist700_tree(tmp_path)
    dd = load_histo_dataset("lunghist700", tree.data_dir)
    assert_matches_tree(dd, tree)
    assert dd["train"].features["label"].names == LUNG_THREE_CLASSES == [
        "adenocarcinoma",
        "squamous cell carcinoma",
        "normal",
    ]
    for ds in dd.values():
        for path, resolution in zip(ds["path"], ds["resolution"]):
            assert resolution == tree.extra["resolution"][path]


def test_lunghist700_seven_classes_and_resolution(tmp_path):
    tree = make_lunghist700_tree(tmp_path, patients=8)
    dd = load_histo_dataset("lunghist700", tree.data_dir, task="7class", resolution="40x")
    assert dd["train"].features["label"].names == sorted(LUNG_FOLDERS)
    found = {p: label for ds in dd.values() for p, label in zip(ds["path"], ds["label"])}
    at_40x = [p for p, resolution in tree.extra["resolution"].items() if resolution == "40x"]
    expected = {p: LUNG_FOLDERS.index(tree.extra["folder"][p]) for p in at_40x}
    assert found == expected


def test_lunghist700_join_uses_all_key_columns(tmp_path):
    """image_id 1 exists in every folder with different patients; each image must get its own row's patient."""
    tree = make_lunghist700_tree(tmp_path, patients=5)
    assert len({p for p in tree.labels if p.endswith("_20x_1.jpg")}) == len(LUNG_FOLDERS)
    dd = load_histo_dataset("lunghist700", tree.data_dir)
    found = {p: g for ds in dd.values() for p, g in zip(ds["path"], ds["group"])}
    assert found == tree.groups


def test_lunghist700_mismatches_between_csv_and_images_are_named(tmp_path):
    tree = make_lunghist700_tree(tmp_path)
    (tree.data_dir / "images" / "scc_md" / "scc_md_20x_1.jpg").unlink()
    (tree.data_dir / "images" / "nor" / "nor_40x_9.jpg").write_bytes(
        (tree.data_dir / "images" / "nor" / "nor_40x_1.jpg").read_bytes()
    )
    with pytest.raises(DataLayoutError) as error:
        load_histo_dataset("lunghist700", tree.data_dir)
    message = str(error.value)
    assert "images/nor/nor_40x_9.jpg" in message
    assert "superclass=scc subclass=md resolution=20x image_id=1" in message


# --- image folder -------------------------------------------------------------------------------------------


def test_imagefolder_with_groups_csv(tmp_path):
    tree = make_imagefolder_tree(tmp_path / "f", {"tumour": 12, "normal": 9, "stroma": 6})
    dd = load_histo_dataset("imagefolder", tree.data_dir, groups_csv=tree.groups_csv)  # a Path works too
    assert_matches_tree(dd, tree)
    assert tree.class_names == ["normal", "stroma", "tumour"]
    assert read_provenance(dd)["options"]["groups_csv"] == str(tree.groups_csv)


def test_provenance_survives_map_select_transform_and_save(tmp_path):
    tree = make_imagefolder_tree(tmp_path / "f", write_groups_csv=False)
    dd = load_histo_dataset("imagefolder", tree.data_dir, split_seed=7)
    changed = dd["train"].map(lambda row: {"extra": 1}).select([0, 1]).with_transform(lambda batch: batch)
    assert read_provenance(changed)["split_seed"] == 7
    dd.save_to_disk(str(tmp_path / "saved"))
    reloaded = load_from_disk(str(tmp_path / "saved"))
    assert read_provenance(reloaded)["counts"] == {part: len(ds) for part, ds in dd.items()}


def test_imagefolder_class_names_set_the_order(tmp_path):
    tree = make_imagefolder_tree(tmp_path / "f", {"b": 6, "a": 6}, write_groups_csv=False)
    dd = load_histo_dataset("imagefolder", tree.data_dir, class_names=["b", "a"])
    assert dd["train"].features["label"].names == ["b", "a"]
    for ds in dd.values():
        for path, label in zip(ds["path"], ds["label"]):
            assert label == (0 if path.startswith("b/") else 1)
    with pytest.raises(DataLayoutError, match="(?s)without a folder.*- c"):
        load_histo_dataset("imagefolder", tree.data_dir, class_names=["b", "a", "c"])


def test_imagefolder_without_groups_says_images_are_their_own_group(tmp_path, caplog):
    tree = make_imagefolder_tree(tmp_path / "f", write_groups_csv=False)
    with caplog.at_level(logging.INFO, logger="modeling_amlpf.data"):
        dd = load_histo_dataset("imagefolder", tree.data_dir)
    assert "every image is its own group" in caplog.text
    groups = [g for ds in dd.values() for g in ds["group"]]
    paths = [p for ds in dd.values() for p in ds["path"]]
    assert groups == paths and len(paths) == tree.num_images


def test_groups_csv_problems_are_all_named(tmp_path):
    tree = make_imagefolder_tree(tmp_path / "f")
    lines = tree.groups_csv.read_text().splitlines()
    dropped = lines[1].split(",")[0]
    lines = [lines[0], *lines[2:], "alpha/ghost.png,g9"]
    tree.groups_csv.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataLayoutError) as error:
        load_histo_dataset("imagefolder", tree.data_dir, groups_csv=str(tree.groups_csv))
    assert dropped in str(error.value) and "alpha/ghost.png" in str(error.value)


def test_image_column_holds_absolute_paths_decoded_lazily_as_rgb(tmp_path):
    tree = make_imagefolder_tree(tmp_path / "f", write_groups_csv=False)
    dd = load_histo_dataset("imagefolder", tree.data_dir)
    feature = dd["train"].features["image"]
    assert isinstance(feature, ImageFeature) and feature.mode == "RGB"
    stored = dd["train"].cast_column("image", ImageFeature(decode=False))[0]["image"]
    assert stored["bytes"] is None and os.path.isabs(stored["path"]) and os.path.isfile(stored["path"])
    assert stored["path"] == str(tree.data_dir / dd["train"][0]["path"])
    assert dd["train"][0]["image"].mode == "RGB"
    counts = Counter(label for ds in dd.values() for label in ds["label"])
    assert [counts[i] for i in range(3)] == [tree.class_counts()[n] for n in tree.class_names]


# --- defaults and folder names (issues 11.6, 14.8) -----------------------------------------------------------


def test_chaoyang_defaults_to_the_slide_disjoint_resplit(tmp_path):
    tree = make_chaoyang_tree(tmp_path)
    dd = load_histo_dataset("chaoyang", tree.data_dir, split_seed=3)
    assert_matches_tree(dd, tree)  # no slide in two parts, although the official split shares slides
    provenance = read_provenance(dd)
    assert provenance["options"]["protocol"] == "resplit" and provenance["group_disjoint"] is True
    assert "test_fraction" in provenance["options"]
    assert json.loads(open(export_split(dd, tmp_path / "split.json")).read())["group_disjoint"] is True
    official = load_histo_dataset("chaoyang", tree.data_dir, protocol="official")
    assert json.loads(open(export_split(official, tmp_path / "official.json")).read())["group_disjoint"] is False
    assert "NOT group-disjoint" in official["test"].info.description


@pytest.mark.parametrize(
    ("name", "builder"),
    [("lunghist700", make_lunghist700_tree), ("breakhis", make_breakhis_tree), ("chaoyang", make_chaoyang_tree)],
)
def test_data_dir_environment_finds_the_folder_names_downloads_unpack_to(tmp_path, monkeypatch, name, builder):
    tree = builder(tmp_path / "store")  # LungHist700/, BreaKHis_v1/, chaoyang-data/ as unpacked
    assert tree.data_dir.parent == tmp_path / "store" and tree.data_dir.name != name
    monkeypatch.setenv("AMLPF_DATA_DIR", str(tmp_path / "store"))
    assert sum(len(ds) for ds in load_histo_dataset(name).values()) == tree.num_images


def test_missing_default_folder_names_both_folder_names(tmp_path, monkeypatch):
    monkeypatch.setenv("AMLPF_DATA_DIR", str(tmp_path / "store"))
    with pytest.raises(FileNotFoundError) as error:
        load_histo_dataset("lunghist700")
    store = tmp_path / "store"
    assert str(error.value).startswith(
        f"No lunghist700 data folder found: looked for {store / 'lunghist700'} and {store / 'LungHist700'} (the "
        "default is $AMLPF_DATA_DIR/lunghist700, else ./data/lunghist700; the name the download unpacks to, "
        "LungHist700, works too).\nExpected layout:\nLungHist700/\n"
    )


def test_lunghist700_row_without_image_names_the_expected_file(tmp_path, caplog):
    tree = make_lunghist700_tree(tmp_path)
    (tree.data_dir / "images" / "scc_md" / "scc_md_20x_1.jpg").unlink()
    line = 2 + next(i for i, path in enumerate(tree.labels) if path.endswith("scc_md/scc_md_20x_1.jpg"))
    with pytest.raises(BadImageError) as error:
        load_histo_dataset("lunghist700", tree.data_dir)
    assert str(error.value) == (
        f"1 image file(s) named by the label file are missing under {tree.data_dir}:\n"
        f"  - images/scc_md/scc_md_20x_1.jpg: data.csv line {line} (superclass=scc subclass=md resolution=20x "
        "image_id=1) has no image file\n"
        "Restore the missing files from the download (or delete their rows from the label file), or leave them out "
        'with on_bad_image="skip" (command line: --on_bad_image skip); skipped files are listed in split.json.'
    )
    with caplog.at_level(logging.WARNING, logger="modeling_amlpf.data"):
        dd = load_histo_dataset("lunghist700", tree.data_dir, on_bad_image="skip")
    assert "Leaving out 1 image(s) named by the label file but missing" in caplog.text
    kept = sorted(p for ds in dd.values() for p in ds["path"])
    assert kept == sorted(p for p in tree.labels if not p.endswith("scc_md/scc_md_20x_1.jpg"))
    report = scan_report(dd)
    assert report.skipped and [path for path, _ in report.missing_files] == ["images/scc_md/scc_md_20x_1.jpg"]
    saved = json.loads(open(export_split(dd, tmp_path / "split.json")).read())
    assert saved["excluded_missing_files"] == ["images/scc_md/scc_md_20x_1.jpg"]
    split_file = tmp_path / "split.json"
    reloaded = load_histo_dataset("lunghist700", tree.data_dir, split_file=split_file, on_bad_image="skip")
    assert {part: list(ds["path"]) for part, ds in reloaded.items()} == {p: list(ds["path"]) for p, ds in dd.items()}
    # At another resolution the missing row is not used, so it blocks nothing.
    assert sum(map(len, load_histo_dataset("lunghist700", tree.data_dir, resolution="40x").values())) > 0


def test_chaoyang_entry_without_file_follows_on_bad_image(tmp_path):
    tree = make_chaoyang_tree(tmp_path)
    victim = sorted(tree.labels)[0]
    (tree.data_dir / victim).unlink()
    with pytest.raises(BadImageError, match=f"(?s){victim}: named by .*json entry \\d+, but the file does not exist"):
        load_histo_dataset("chaoyang", tree.data_dir)
    dd = load_histo_dataset("chaoyang", tree.data_dir, on_bad_image="skip")
    assert sum(map(len, dd.values())) == tree.num_images - 1 and scan_report(dd).missing_files[0][0] == victim


# --- Unicode class names (issue 16.4) ------------------------------------------------------------------------


ACCENTED = "Adénocarcinome"  # NFC: é is U+00E9
ACCENTED_NFD = unicodedata.normalize("NFD", ACCENTED)  # e + U+0301, as macOS names files


def test_class_names_in_any_script_and_any_normalisation_work_end_to_end(tmp_path):
    tree = make_imagefolder_tree(tmp_path / "f", {ACCENTED_NFD: 6, "正常": 6, "Норма": 6}, images_per_group=2)
    assert (tree.data_dir / ACCENTED_NFD).is_dir() and not (tree.data_dir / ACCENTED).exists()
    # The groups csv is typed in NFC, as most editors write it; the files on disk are NFD.
    tree.groups_csv.write_text(unicodedata.normalize("NFC", tree.groups_csv.read_text()))
    wanted = ["正常", ACCENTED, "Норма"]  # typed in NFC
    dd = load_histo_dataset("imagefolder", tree.data_dir, class_names=wanted, groups_csv=tree.groups_csv)
    nfc = functools.partial(unicodedata.normalize, "NFC")
    expected = dataclasses.replace(
        tree,
        class_names=wanted,
        labels={path: wanted.index(nfc(path.split("/")[0])) for path in tree.labels},  # paths as on disk
        groups={path: nfc(group) for path, group in tree.groups.items()},  # groups as the csv spells them
    )
    assert_matches_tree(dd, expected)
    # Default order: folder names sorted in NFC, whatever the file system stores.
    assert load_histo_dataset("imagefolder", tree.data_dir)["test"].features["label"].names == sorted(wanted)
    # The published split names the classes readably and reloads, also with paths typed in NFC.
    path = export_split(dd, tmp_path / "split.json")
    text = open(path, encoding="utf-8").read()
    assert "正常" in text and "Норма" in text
    composed = tmp_path / "composed.json"
    composed.write_text(unicodedata.normalize("NFC", text), encoding="utf-8")
    reloaded = load_histo_dataset("imagefolder", tree.data_dir, split_file=composed, groups_csv=tree.groups_csv)
    assert {p: list(ds["path"]) for p, ds in reloaded.items()} == {p: list(ds["path"]) for p, ds in dd.items()}


def test_names_differing_only_by_normalisation_are_named_as_such(tmp_path):
    tree = make_imagefolder_tree(tmp_path / "f", {ACCENTED: 3, ACCENTED_NFD: 3, "normal": 3}, write_groups_csv=False)
    with pytest.raises(DataLayoutError) as error:
        load_histo_dataset("imagefolder", tree.data_dir)
    assert (
        "folders whose names differ only by Unicode normalisation (NFC); rename one (1):\n"
        f"  - {ACCENTED!r} (NFC, U+00E9) and {ACCENTED_NFD!r} (NFD, U+0301)"
    ) in str(error.value)
    single = make_imagefolder_tree(tmp_path / "g", {ACCENTED: 3, "normal": 3}, write_groups_csv=False)
    with pytest.raises(DataLayoutError) as error:
        load_histo_dataset("imagefolder", single.data_dir, class_names=[ACCENTED, ACCENTED_NFD, "normal"])
    assert (
        f"repeated class names (1):\n  - {ACCENTED}: {ACCENTED!r} (NFC, U+00E9) and {ACCENTED_NFD!r} (NFD, U+0301) "
        "differ only by Unicode normalisation (NFC)"
    ) in str(error.value)
