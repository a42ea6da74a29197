"""Bad input gets a clear error and loses nothing: unreadable images, OS clutter, odd modes, bad label files."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
from data_trees import (
    add_os_clutter,
    make_breakhis_tree,
    make_chaoyang_tree,
    make_imagefolder_tree,
    make_lunghist700_tree,
    write_mode_image,
    write_non_image,
    write_truncated_jpeg,
    write_zero_byte,
)
from PIL import Image

from modeling_amlpf.data import BadImageError, DataLayoutError, export_split, load_histo_dataset, scan_report
from modeling_amlpf.data import scan as scan_module


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("AMLPF_CACHE", str(tmp_path / "cache"))


def tree_with_bad_files(root: Path):
    tree = make_imagefolder_tree(root, write_groups_csv=False)
    bad = {
        "alpha/cut.jpg": write_truncated_jpeg(root / "alpha" / "cut.jpg"),
        "beta/empty.png": write_zero_byte(root / "beta" / "empty.png"),
        "gamma/sub/page.png": write_non_image(root / "gamma" / "sub" / "page.png"),
    }
    return tree, bad


def test_bad_images_raise_one_error_naming_all_of_them(tmp_path):
    tree, bad = tree_with_bad_files(tmp_path / "f")
    with pytest.raises(BadImageError) as error:
        load_histo_dataset("imagefolder", tree.data_dir)
    message = str(error.value)
    for relative in bad:
        assert relative in message
    assert "beta/empty.png: empty file (0 bytes)" in message and "alpha/cut.jpg: OSError" in message
    assert 'on_bad_image="skip"' in message and "--on_bad_image skip" in message
    assert sorted(path for path, _ in error.value.bad_images) == sorted(bad)


def test_skip_mode_drops_and_reports_bad_images(tmp_path, caplog):
    tree, bad = tree_with_bad_files(tmp_path / "f")
    with caplog.at_level(logging.WARNING, logger="modeling_amlpf.data"):
        dd = load_histo_dataset("imagefolder", tree.data_dir, on_bad_image="skip")
    assert sum(len(ds) for ds in dd.values()) == tree.num_images
    kept = {p for ds in dd.values() for p in ds["path"]}
    assert kept == set(tree.labels) and not kept & set(bad)
    report = scan_report(dd["train"])
    assert report.skipped and sorted(p for p, _ in report.bad_images) == sorted(bad)
    assert report.num_scanned == tree.num_images + len(bad)
    assert all(relative in caplog.text for relative in bad)
    exported = json.loads(open(export_split(dd, tmp_path / "split.json")).read())
    assert sorted(exported["excluded_bad_images"]) == sorted(bad)


def test_split_entries_naming_skipped_images_are_dropped_not_fatal(tmp_path):
    tree, bad = tree_with_bad_files(tmp_path / "f")
    good = sorted(tree.labels)
    (tmp_path / "train.txt").write_text("".join(f"{p} {tree.labels[p]}\n" for p in good[:-3]) + "alpha/cut.jpg 0\n")
    (tmp_path / "test.txt").write_text("".join(f"{p} {tree.labels[p]}\n" for p in good[-3:]))
    (tmp_path / "validation.txt").write_text("")  # an empty validation part is honoured, not carved
    files = {"train": tmp_path / "train.txt", "test": tmp_path / "test.txt", "validation": tmp_path / "validation.txt"}
    dd = load_histo_dataset("imagefolder", tree.data_dir, split_files=files, on_bad_image="skip")
    assert sorted(dd["train"]["path"]) == good[:-3] and len(dd["validation"]) == 0


def test_os_clutter_is_ignored_silently(tmp_path, caplog):
    tree = make_imagefolder_tree(tmp_path / "f", write_groups_csv=False)
    for folder in ("", "alpha", "beta"):
        add_os_clutter(tree.data_dir / folder, image_name="beta-g0_0.png")
    add_os_clutter(tree.data_dir / "__MACOSX" / "alpha")
    with caplog.at_level(logging.WARNING, logger="modeling_amlpf.data"):
        dd = load_histo_dataset("imagefolder", tree.data_dir)
    assert dd["train"].features["label"].names == tree.class_names
    assert sorted(p for ds in dd.values() for p in ds["path"]) == sorted(tree.labels)
    assert caplog.text == ""

    breakhis = make_breakhis_tree(tmp_path / "b", patients_per_subtype=1, images_per_magnification=1)
    adenosis = breakhis.data_dir / "histology_slides" / "breast" / "benign" / "SOB" / "adenosis"
    magnification_dir = next(adenosis.iterdir()) / "40X"
    add_os_clutter(magnification_dir)
    dd = load_histo_dataset("breakhis", breakhis.data_dir, val_fraction=0.0, test_fraction=0.5)
    assert sum(len(ds) for ds in dd.values()) == breakhis.num_images


def test_scan_is_cached_by_size_and_mtime(tmp_path, monkeypatch):
    tree = make_imagefolder_tree(tmp_path / "f", write_groups_csv=False)
    decoded = []
    real_check = scan_module.check_image

    def counting_check(path, rgb8_path, *limits):
        decoded.append(path)
        return real_check(path, rgb8_path, *limits)

    monkeypatch.setattr(scan_module, "check_image", counting_check)
    first = load_histo_dataset("imagefolder", tree.data_dir)
    assert len(decoded) == tree.num_images == scan_report(first).num_decoded
    assert os.listdir(tmp_path / "cache" / "scan")

    decoded.clear()
    second = load_histo_dataset("imagefolder", tree.data_dir, split_seed=2)
    assert decoded == [] and scan_report(second).num_decoded == 0

    changed = tree.data_dir / sorted(tree.labels)[0]
    write_truncated_jpeg(changed)  # same name, new content: must be decoded again and found bad
    with pytest.raises(BadImageError, match=sorted(tree.labels)[0]):
        load_histo_dataset("imagefolder", tree.data_dir)
    assert decoded == [str(changed)]


@pytest.mark.parametrize(
    ("name", "mode", "copied"),
    [("cmyk.jpg", "CMYK", False), ("rgba.png", "RGBA", True), ("gray.png", "L", False), ("deep.png", "I;16", True)],
)
def test_every_mode_decodes_to_faithful_rgb(tmp_path, name, mode, copied):
    tree = make_imagefolder_tree(tmp_path / "f", {"alpha": 3, "beta": 3, "gamma": 3}, write_groups_csv=False)
    expected = write_mode_image(tree.data_dir / "alpha" / name, mode)
    dd = load_histo_dataset("imagefolder", tree.data_dir, val_fraction=0.0, test_fraction=0.5)
    rows = [row for ds in dd.values() for row in ds if row["path"] == f"alpha/{name}"]
    assert len(rows) == 1
    image = rows[0]["image"]
    assert image.mode == "RGB"
    tolerance = 12 if mode == "CMYK" else 1  # CMYK goes through lossy JPEG; the others are lossless
    assert np.abs(np.asarray(image).astype(int) - expected.astype(int)).max() <= tolerance
    assert (f"alpha/{name}" in scan_report(dd).rgb8_copies) == copied


def test_chaoyang_label_file_problems_are_all_named(tmp_path):
    tree = make_chaoyang_tree(tmp_path)
    entries = json.loads((tree.data_dir / "train.json").read_text())
    entries[0]["label"] = 7
    entries[1]["name"] = "train/000000-IMG999x999-1.JPG"
    entries[2] = {"label": 1}
    entries.append({"name": "../outside.JPG", "label": 0})
    (tree.data_dir / "train.json").write_text(json.dumps(entries))
    with pytest.raises(DataLayoutError) as error:
        load_histo_dataset("chaoyang", tree.data_dir)
    message = str(error.value)
    assert "train.json entry 0" in message and "label 7" in message
    assert "000000-IMG999x999-1.JPG" in message
    assert "train.json entry 2: {'label': 1}" in message
    assert "../outside.JPG" in message


# --- small data traps (issue 16.6) ---------------------------------------------------------------------------


def test_stray_non_image_files_are_skipped_and_listed_once(tmp_path, caplog):
    tree = make_imagefolder_tree(tmp_path / "f", write_groups_csv=False)
    (tree.data_dir / "alpha" / "notes.txt").write_text("scanned on the old scanner\n")
    (tree.data_dir / "beta" / "labels.csv").write_text("path,label\n")
    (tree.data_dir / "gamma" / "sub").mkdir()
    (tree.data_dir / "gamma" / "sub" / "cohort.xlsx").write_bytes(b"PK\x03\x04 not really a workbook")
    stray = ["alpha/notes.txt", "beta/labels.csv", "gamma/sub/cohort.xlsx"]
    with caplog.at_level(logging.WARNING, logger="modeling_amlpf.data"):
        dd = load_histo_dataset("imagefolder", tree.data_dir)
    assert caplog.messages == [
        "Skipping 3 file(s) whose suffix is not an image format (they are listed in scan_report(dataset) and "
        "split.json): alpha/notes.txt, beta/labels.csv, gamma/sub/cohort.xlsx"
    ]
    assert sorted(p for ds in dd.values() for p in ds["path"]) == sorted(tree.labels)
    report = scan_report(dd)
    assert report.non_image_files == stray and report.num_scanned == tree.num_images and not report.skipped
    assert json.loads(open(export_split(dd, tmp_path / "split.json")).read())["skipped_non_images"] == stray


def test_stray_files_in_lunghist700_and_breakhis_image_folders_are_skipped(tmp_path, caplog):
    lung = make_lunghist700_tree(tmp_path)
    (lung.data_dir / "images" / "nor" / "README.txt").write_text("normal tissue\n")
    with caplog.at_level(logging.WARNING, logger="modeling_amlpf.data"):
        dd = load_histo_dataset("lunghist700", lung.data_dir)
    assert scan_report(dd).non_image_files == ["images/nor/README.txt"] and "images/nor/README.txt" in caplog.text
    assert sum(map(len, dd.values())) == lung.num_images
    breakhis = make_breakhis_tree(tmp_path / "b", patients_per_subtype=1, images_per_magnification=1)
    magnification_dir = next(iter(breakhis.labels)).rsplit("/", 1)[0]
    breast = breakhis.data_dir / "histology_slides" / "breast"
    (breast / magnification_dir / "stain.xlsx").write_bytes(b"PK")
    dd = load_histo_dataset("breakhis", breakhis.data_dir, val_fraction=0.0, test_fraction=0.5)
    assert scan_report(dd).non_image_files == [f"{magnification_dir}/stain.xlsx"]


def test_tiny_images_are_named_in_a_warning(tmp_path, caplog):
    tree = make_imagefolder_tree(tmp_path / "f", write_groups_csv=False)
    Image.new("RGB", (1, 40), (200, 30, 90)).save(tree.data_dir / "alpha" / "thin.png")
    for attempt in ("scanned", "from the scan cache"):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="modeling_amlpf.data"):
            dd = load_histo_dataset("imagefolder", tree.data_dir)
        assert caplog.messages == [
            "1 image(s) have a side below 32 pixels (min_image_side) and carry little detail once upsized to the "
            "model's views: alpha/thin.png (1x40)"
        ], attempt
        assert scan_report(dd).small_images == [("alpha/thin.png", "1x40")]
        assert "alpha/thin.png" in {p for ds in dd.values() for p in ds["path"]}  # still used
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="modeling_amlpf.data"):
        dd = load_histo_dataset("imagefolder", tree.data_dir, min_image_side=0)
    assert caplog.text == "" and scan_report(dd).small_images == []
    dd = load_histo_dataset("imagefolder", tree.data_dir, min_image_side=33)
    assert len(scan_report(dd).small_images) == tree.num_images + 1  # the tree's 32 px images count too


def test_tiny_jpeg_size_is_the_stored_size_not_the_draft_size(tmp_path):
    """The scan decodes JPEGs at 1/8 scale; the size it reports must be the file's own."""
    tree = make_imagefolder_tree(tmp_path / "f", write_groups_csv=False, suffix=".jpg", size=80)
    dd = load_histo_dataset("imagefolder", tree.data_dir, min_image_side=81)
    assert {size for _, size in scan_report(dd).small_images} == {"80x80"}
