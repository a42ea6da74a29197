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
    write_declared_png,
    write_mode_image,
    write_non_image,
    write_strip,
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
    # 3x40: thin but within max_aspect_ratio (16:1); a 1x40 strip is a bad image (see the size tests below)
    Image.new("RGB", (3, 40), (200, 30, 90)).save(tree.data_dir / "alpha" / "thin.png")
    for attempt in ("scanned", "from the scan cache"):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="modeling_amlpf.data"):
            dd = load_histo_dataset("imagefolder", tree.data_dir)
        assert caplog.messages == [
            "1 image(s) have a side below 32 pixels (min_image_side) and carry little detail once upsized to the "
            "model's views: alpha/thin.png (3x40)"
        ], attempt
        assert scan_report(dd).small_images == [("alpha/thin.png", "3x40")]
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


# ----------------------------------------------------------------------------------------------------------
# Sizes no tile has, links, undecodable names, one class (issue 23)
# ----------------------------------------------------------------------------------------------------------

# (relative path, width, height) of images beyond the limits, and of real tile sizes that must pass.
ODD_SIZES = {"alpha/strip_1x5000.png": (1, 5000), "beta/strip_5000x1.png": (5000, 1)}
DECLARED = {"gamma/bomb.png": (100_000, 100_000), "gamma/big.png": (8000, 8000)}  # headers only: no pixels
REAL_TILES = {"alpha/breakhis.png": (700, 460), "beta/lunghist700.jpg": (1200, 1600), "gamma/chaoyang.png": (512, 512)}


def tree_with_odd_sizes(root: Path):
    tree = make_imagefolder_tree(root, write_groups_csv=False)
    for relative, (width, height) in {**ODD_SIZES, **REAL_TILES}.items():
        write_strip(root / relative, width, height)
    for relative, (width, height) in DECLARED.items():
        write_declared_png(root / relative, width, height)
    return tree


def test_images_beyond_the_size_limits_are_bad_images_named_from_their_header(tmp_path, monkeypatch):
    tree_with_odd_sizes(tmp_path / "f")
    decoded = []
    real_load = Image.Image.load

    def recording_load(image):
        decoded.append(image.size)
        return real_load(image)

    monkeypatch.setattr(Image.Image, "load", recording_load)
    with pytest.raises(BadImageError) as error:
        load_histo_dataset("imagefolder", tmp_path / "f")
    message = str(error.value)
    assert sorted(path for path, _ in error.value.bad_images) == sorted({**ODD_SIZES, **DECLARED})
    assert "alpha/strip_1x5000.png: the image is 1x5000 px" in message and "max_aspect_ratio=16" in message
    assert "beta/strip_5000x1.png: the image is 5000x1 px" in message
    assert "gamma/big.png: the image is 8000x8000 px" in message and "max_image_pixels=40,000,000" in message
    assert "gamma/bomb.png: DecompressionBombError" in message
    assert not [size for size in decoded if size in {*ODD_SIZES.values(), *DECLARED.values()}]  # header only
    assert not any(tile in message for tile in REAL_TILES)  # BreaKHis, LungHist700 and Chaoyang sizes pass


def test_skip_leaves_oversized_images_out_and_lists_them_in_split_json(tmp_path):
    tree = tree_with_odd_sizes(tmp_path / "f")
    dd = load_histo_dataset("imagefolder", tmp_path / "f", on_bad_image="skip")
    kept = {path for part in dd.values() for path in part["path"]}
    assert kept == set(tree.labels) | set(REAL_TILES)
    exported = json.loads(open(export_split(dd, tmp_path / "split.json")).read())
    assert sorted(exported["excluded_bad_images"]) == sorted({**ODD_SIZES, **DECLARED})
    report = scan_report(dd["train"])
    assert (report.max_image_pixels, report.max_aspect_ratio) == (40_000_000, 16.0)
    # The answer depends on the limits, so it is not cached: raised limits take the strips in on the next load.
    wider = load_histo_dataset("imagefolder", tmp_path / "f", on_bad_image="skip", max_aspect_ratio=0)
    assert set(ODD_SIZES) <= {path for part in wider.values() for path in part["path"]}
    lower = load_histo_dataset("imagefolder", tmp_path / "f", on_bad_image="skip", max_image_pixels=1_000_000)
    reasons = dict(scan_report(lower["train"]).bad_images)  # a cached "ok" is checked against the new limit
    assert "1,920,000 pixels exceed max_image_pixels=1,000,000" in reasons["beta/lunghist700.jpg"]
    assert "alpha/breakhis.png" not in reasons


def test_a_class_folder_linked_into_another_class_is_refused_naming_both_paths(tmp_path):
    tree = make_imagefolder_tree(tmp_path / "f", write_groups_csv=False)
    os.symlink("../beta", tmp_path / "f" / "alpha" / "more")  # ant/more -> ../bee
    with pytest.raises(DataLayoutError) as error:
        load_histo_dataset("imagefolder", tree.data_dir)
    message = str(error.value)
    beta = sorted(path for path in tree.labels if path.startswith("beta/"))
    assert f"alpha/more/{beta[0].split('/')[1]} (same file as {beta[0]}): classes 'beta' and 'alpha'" in message
    assert "same file under two class labels (6)" in message


def test_the_same_file_twice_under_one_label_is_counted_once(tmp_path, caplog):
    tree = make_imagefolder_tree(tmp_path / "f", write_groups_csv=False)
    first = sorted(path for path in tree.labels if path.startswith("alpha/"))[0]
    os.symlink(os.path.basename(first), tmp_path / "f" / "alpha" / "again.png")
    os.link(tmp_path / "f" / first, tmp_path / "f" / "alpha" / "hardlink.png")
    with caplog.at_level(logging.WARNING, logger="modeling_amlpf.data"):
        dd = load_histo_dataset("imagefolder", tree.data_dir)
    paths = [path for part in dd.values() for path in part["path"]]
    assert sorted(paths) == sorted(tree.labels)  # the links are not second copies
    assert "2 path(s)" in caplog.text and f"alpha/again.png (same file as {first})" in caplog.text


def test_symbolic_link_loops_are_named_not_followed_forever(tmp_path, caplog):
    tree = make_imagefolder_tree(tmp_path / "f", write_groups_csv=False)
    os.symlink(".", tmp_path / "f" / "alpha" / "here")  # a folder loop: alpha/here/here/here/...
    (tmp_path / "f" / "beta" / "sub").mkdir()
    os.symlink("../..", tmp_path / "f" / "beta" / "sub" / "root")  # loops through the data root
    os.symlink("self.png", tmp_path / "f" / "gamma" / "self.png")  # a file loop
    with caplog.at_level(logging.WARNING, logger="modeling_amlpf.data"):
        with pytest.raises(DataLayoutError) as error:
            load_histo_dataset("imagefolder", tree.data_dir)
    assert "Skipping alpha/here: a symbolic link loop" in caplog.text
    # beta/sub/root reaches the other classes' files under label beta: named as the same file under two labels
    assert "beta/sub/root/alpha/" in str(error.value)
    os.remove(tmp_path / "f" / "beta" / "sub" / "root")
    with pytest.raises(BadImageError, match=r"gamma/self\.png: cannot stat: \[Errno 40\] Too many levels"):
        load_histo_dataset("imagefolder", tree.data_dir)
    dd = load_histo_dataset("imagefolder", tree.data_dir, on_bad_image="skip")
    assert sorted(path for part in dd.values() for path in part["path"]) == sorted(tree.labels)


def test_file_names_that_are_not_utf8_are_named_escaped_or_skipped(tmp_path):
    tree = make_imagefolder_tree(tmp_path / "f", write_groups_csv=False)
    name = os.fsencode(tmp_path / "f" / "alpha") + b"/latin1_\xe9\xff.png"  # a Latin-1 name on a UTF-8 system
    with open(name, "wb") as handle:
        handle.write((tmp_path / "f" / sorted(tree.labels)[0]).read_bytes())
    with pytest.raises(BadImageError) as error:
        load_histo_dataset("imagefolder", tree.data_dir)
    assert "alpha/latin1_\\xe9\\xff.png: the file name is not valid UTF-8" in str(error.value)
    dd = load_histo_dataset("imagefolder", tree.data_dir, on_bad_image="skip")
    assert sorted(path for part in dd.values() for path in part["path"]) == sorted(tree.labels)
    exported = json.loads(open(export_split(dd, tmp_path / "split.json"), encoding="utf-8").read())
    assert exported["excluded_bad_images"] == ["alpha/latin1_\\xe9\\xff.png"]


def test_one_class_is_refused_naming_the_folder_and_the_class(tmp_path):
    tree = make_imagefolder_tree(tmp_path / "f", {"tumour": 6}, write_groups_csv=False)
    with pytest.raises(DataLayoutError) as error:
        load_histo_dataset("imagefolder", tree.data_dir)
    message = str(error.value)
    assert f"{tree.data_dir} holds 1 class(es) ('tumour')" in message and "at least two" in message
    assert "--external_cohort" in message
    cohort = load_histo_dataset("imagefolder", tree.data_dir, external_cohort=True)  # evaluation: one class is fine
    assert len(cohort["test"]) == 6


@pytest.mark.parametrize("name", ["x,y=z", "a=b", "Tumour"])
def test_the_class_map_hint_is_a_form_the_parser_accepts(tmp_path, name):
    import re

    from modeling_amlpf.data.cohort import map_class_names, parse_class_map

    with pytest.raises(ValueError) as error:
        map_class_names([name, "normal"], ["normal", "tumor"], {}, data_source="the data", model_source="the model")
    message = str(error.value)
    inline = re.search(r'--class_map "(.*)" \(or a YAML/JSON file\)', message)
    if inline:
        class_map = parse_class_map(inline.group(1))
    else:
        entry = re.search(r"a YAML file holding the line (.*) \(--class_map map\.yaml\)", message).group(1)
        (tmp_path / "map.yaml").write_text(entry + "\n", encoding="utf-8")
        class_map = parse_class_map(str(tmp_path / "map.yaml"))
    assert class_map == {name: "normal"}
    new_ids, _ = map_class_names([name, "normal"], ["normal", "tumor"], class_map, data_source="d", model_source="m")
    assert new_ids == [0, 0]
