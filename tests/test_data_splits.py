"""Group-disjoint stratified splits, split export/reload, and user-given split files."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections import Counter

import numpy as np
import pytest
from data_trees import make_breakhis_tree, make_imagefolder_tree, make_lunghist700_tree

from modeling_amlpf.data import (
    DataLayoutError,
    compare_with_training_split,
    data_root_tag,
    export_split,
    export_split_txt,
    group_stratified_split,
    load_histo_dataset,
    load_split_file,
    read_provenance,
)

PARTS = ("train", "validation", "test")
FRACTIONS = {"train": 0.7, "validation": 0.1, "test": 0.2}


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("AMLPF_CACHE", str(tmp_path / "cache"))


def random_groups(seed, num_groups=60, num_classes=4):
    """Labels and groups with uneven group sizes, mixed-class groups and imbalanced classes."""
    rng = np.random.default_rng(seed)
    labels, groups = [], []
    for group in range(num_groups):
        size = int(rng.integers(1, 12))
        main = int(rng.choice(num_classes, p=[0.5, 0.25, 0.15, 0.1][:num_classes]))
        for _ in range(size):
            labels.append(main if rng.random() < 0.8 else int(rng.integers(num_classes)))
            groups.append(f"patient-{group}")
    return labels, groups


def parts_of(dataset_dict):
    return {part: list(ds["path"]) for part, ds in dataset_dict.items()}


# --- the splitting algorithm --------------------------------------------------------------------------------


@pytest.mark.parametrize("data_seed", [0, 1, 2])
def test_split_is_complete_and_group_disjoint(data_seed):
    labels, groups = random_groups(data_seed)
    parts = group_stratified_split(labels, groups, FRACTIONS, seed=5)
    positions = np.concatenate([parts[p] for p in PARTS])
    assert sorted(positions.tolist()) == list(range(len(labels)))
    owner = {}
    for part in PARTS:
        for i in parts[part]:
            assert owner.setdefault(groups[i], part) == part
    # Part sizes follow the fractions as far as whole groups allow (groups hold at most 11 images).
    for part, share in FRACTIONS.items():
        assert abs(len(parts[part]) - share * len(labels)) <= 22


def test_singleton_groups_are_stratified_to_within_one_image():
    labels = [0] * 500 + [1] * 300 + [2] * 150 + [3] * 50
    groups = [str(i) for i in range(len(labels))]
    parts = group_stratified_split(labels, groups, FRACTIONS, seed=3)
    for part, share in FRACTIONS.items():
        counts = Counter(labels[i] for i in parts[part])
        for label, total in Counter(labels).items():
            assert abs(counts[label] - share * total) <= 1, (part, label, counts[label], share * total)


def test_rare_class_groups_spread_over_all_parts():
    """Three single-class groups of a rare class: one should go to each part before any part gets two."""
    labels = [0] * 60 + [1] * 6
    groups = [f"common-{i // 3}" for i in range(60)] + [f"rare-{i // 2}" for i in range(6)]
    for seed in range(1, 11):
        parts = group_stratified_split(labels, groups, FRACTIONS, seed=seed)
        for part in PARTS:
            assert any(labels[i] == 1 for i in parts[part]), (seed, part)


def test_split_depends_only_on_seed():
    labels, groups = random_groups(7)
    first = group_stratified_split(labels, groups, FRACTIONS, seed=1)
    again = group_stratified_split(list(labels), list(groups), dict(FRACTIONS), seed=1)
    assert all(np.array_equal(first[p], again[p]) for p in PARTS)
    tests = {tuple(group_stratified_split(labels, groups, FRACTIONS, seed=s)["test"]) for s in range(1, 11)}
    assert len(tests) == 10


def test_as_many_groups_as_parts_fills_every_part():
    for seed in range(1, 11):
        parts = group_stratified_split([0, 1, 0], ["a", "b", "c"], FRACTIONS, seed=seed)
        assert sorted(len(parts[p]) for p in PARTS) == [1, 1, 1]


def test_too_few_groups_is_an_error():
    with pytest.raises(DataLayoutError, match="Only 2 group"):
        group_stratified_split([0, 1, 0, 1], ["a", "a", "b", "b"], FRACTIONS, seed=1)


def test_bad_fractions_are_rejected(tmp_path):
    tree = make_imagefolder_tree(tmp_path / "f", write_groups_csv=False)
    with pytest.raises(ValueError, match="below 1"):
        load_histo_dataset("imagefolder", tree.data_dir, test_fraction=0.6, val_fraction=0.4)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        load_histo_dataset("imagefolder", tree.data_dir, val_fraction=-0.1)


def test_val_fraction_zero_gives_empty_validation(tmp_path):
    tree = make_imagefolder_tree(tmp_path / "f", write_groups_csv=False)
    dd = load_histo_dataset("imagefolder", tree.data_dir, val_fraction=0.0)
    assert len(dd["validation"]) == 0 and len(dd["train"]) + len(dd["test"]) == tree.num_images


def test_dataset_splits_differ_across_seeds_and_repeat_per_seed(tmp_path):
    tree = make_breakhis_tree(tmp_path, patients_per_subtype=4, images_per_magnification=1, magnifications=("40X",))
    test_sets = set()
    for seed in range(1, 11):
        dd = load_histo_dataset("breakhis", tree.data_dir, split_seed=seed)
        groups = {part: set(ds["group"]) for part, ds in dd.items()}
        assert not (groups["train"] & groups["test"] or groups["train"] & groups["validation"])
        assert not groups["validation"] & groups["test"]
        test_sets.add(tuple(sorted(dd["test"]["path"])))
    assert len(test_sets) == 10
    assert parts_of(load_histo_dataset("breakhis", tree.data_dir, split_seed=3)) == parts_of(
        load_histo_dataset("breakhis", tree.data_dir, split_seed=3)
    )


# --- export and reload --------------------------------------------------------------------------------------


def test_export_then_reload_gives_identical_parts(tmp_path):
    tree = make_breakhis_tree(tmp_path, images_per_magnification=1)
    dd = load_histo_dataset("breakhis", tree.data_dir, split_seed=6, task="binary", magnification="100X")
    path = export_split(dd, tmp_path / "published" / "breakhis_seed6.json")
    saved = json.loads(open(path).read())
    assert saved["dataset"] == "breakhis" and saved["split_seed"] == 6
    assert saved["options"]["task"] == "binary" and saved["options"]["magnification"] == "100X"
    assert saved["parts"]["test"][0] == [dd["test"][0]["path"], dd["test"][0]["label"], dd["test"][0]["group"]]
    assert load_split_file(path)["parts"] == saved["parts"]
    # Options come back from the file; the seed argument no longer matters.
    reloaded = load_histo_dataset("breakhis", tree.data_dir, split_file=path, split_seed=99)
    assert parts_of(reloaded) == parts_of(dd)
    assert reloaded["train"].features["label"].names == ["benign", "malignant"]
    assert read_provenance(reloaded)["split_seed"] == 6


def test_reference_txt_files_round_trip(tmp_path):
    tree = make_lunghist700_tree(tmp_path)
    dd = load_histo_dataset("lunghist700", tree.data_dir, split_seed=2)
    written = export_split_txt(dd, tmp_path / "txt")
    assert [p.rsplit("/", 1)[-1] for p in written] == ["train.txt", "validation.txt", "test.txt"]
    first_line = open(written[2]).readline().split()
    assert first_line == [dd["test"][0]["path"], str(dd["test"][0]["label"])]
    files = dict(zip(PARTS, written))
    assert parts_of(load_histo_dataset("lunghist700", tree.data_dir, split_files=files)) == parts_of(dd)


def test_split_files_without_validation_carve_it_from_train(tmp_path, caplog):
    tree = make_imagefolder_tree(tmp_path / "f", {"a": 30, "b": 30}, images_per_group=2)
    train = [p for p in sorted(tree.labels) if not p.endswith(("_0.png", "_1.png"))]
    test = [p for p in sorted(tree.labels) if p.endswith("_0.png")]  # *_1.png are in no part
    (tmp_path / "train.txt").write_text("".join(f"{tree.data_dir / p} {tree.labels[p]}\n" for p in train))  # absolute
    (tmp_path / "test.txt").write_text("# reference split\n\n" + "".join(f"{p} {tree.labels[p]}\n" for p in test))
    with caplog.at_level(logging.WARNING, logger="modeling_amlpf.data"):
        dd = load_histo_dataset(
            "imagefolder",
            tree.data_dir,
            groups_csv=str(tree.groups_csv),
            split_files={"train": tmp_path / "train.txt", "test": tmp_path / "test.txt"},
            val_fraction=0.2,
        )
    assert "2 of 60 images are in no part" in caplog.text
    assert sorted(dd["test"]["path"]) == test
    assert sorted([*dd["train"]["path"], *dd["validation"]["path"]]) == sorted(train)
    assert not set(dd["train"]["group"]) & set(dd["validation"]["group"])
    assert 0.1 * len(train) <= len(dd["validation"]) <= 0.3 * len(train)


def test_split_file_entries_are_checked_and_every_problem_named(tmp_path):
    tree = make_breakhis_tree(tmp_path, patients_per_subtype=2, images_per_magnification=1)
    paths = sorted(tree.labels)
    outside = tmp_path / "elsewhere.png"
    outside.write_bytes(b"x")
    train_lines = [f"{p} {tree.labels[p]}" for p in paths[:20]]
    train_lines += [
        "benign/SOB/adenosis/missing.png 0",  # missing file
        f"{outside} 1",  # outside the data root
        f"{paths[20]} 9",  # label out of range
        f"{paths[21]} {(tree.labels[paths[21]] + 1) % 8}",  # label disagrees with the folder
        "just-a-path-without-label",  # malformed
    ]
    (tmp_path / "train.txt").write_text("\n".join(train_lines) + "\n")
    (tmp_path / "test.txt").write_text(f"{paths[0]} {tree.labels[paths[0]]}\n")  # duplicate of a train entry
    files = {"train": tmp_path / "train.txt", "test": tmp_path / "test.txt"}
    with pytest.raises(DataLayoutError) as error:
        load_histo_dataset("breakhis", tree.data_dir, split_files=files)
    assert "just-a-path-without-label" in str(error.value)  # malformed lines are reported first
    (tmp_path / "train.txt").write_text("\n".join(train_lines[:-1]) + "\n")
    with pytest.raises(DataLayoutError) as error:
        load_histo_dataset("breakhis", tree.data_dir, split_files=files)
    message = str(error.value)
    for expected in ("missing.png", str(outside), f"{paths[20]} label 9", paths[21], f"test.txt:1: {paths[0]}"):
        assert expected in message, expected
    assert "outside the data root" in message and "out of range" in message and "more than once" in message


def test_split_files_may_be_relative_to_the_given_folder(tmp_path):
    """Reference files often hold paths relative to the folder the user has, not to breast/."""
    tree = make_breakhis_tree(tmp_path, patients_per_subtype=2, images_per_magnification=1, magnifications=("40X",))
    prefix = "histology_slides/breast/"
    paths = sorted(tree.labels)
    (tmp_path / "train.txt").write_text("".join(f"{prefix}{p} {tree.labels[p]}\n" for p in paths[::2]))
    (tmp_path / "test.txt").write_text("".join(f"{prefix}{p} {tree.labels[p]}\n" for p in paths[1::2]))
    dd = load_histo_dataset(
        "breakhis", tree.data_dir, split_files={"train": tmp_path / "train.txt", "test": tmp_path / "test.txt"}
    )
    assert sorted(dd["test"]["path"]) == paths[1::2]


def test_filtered_out_images_in_split_files_are_named(tmp_path):
    tree = make_breakhis_tree(tmp_path, patients_per_subtype=2, images_per_magnification=1)
    at_100x = [p for p, m in tree.extra["magnification"].items() if m == "100X"]
    at_40x = [p for p, m in tree.extra["magnification"].items() if m == "40X"]
    (tmp_path / "train.txt").write_text("".join(f"{p} {tree.labels[p]}\n" for p in at_40x[:-1] + at_100x[:1]))
    (tmp_path / "test.txt").write_text(f"{at_40x[-1]} {tree.labels[at_40x[-1]]}\n")
    files = {"train": tmp_path / "train.txt", "test": tmp_path / "test.txt"}
    with pytest.raises(DataLayoutError, match="(?s)not images of this dataset with these options.*100X"):
        load_histo_dataset("breakhis", tree.data_dir, magnification="40X", split_files=files)


def test_split_files_need_train_and_test(tmp_path):
    tree = make_imagefolder_tree(tmp_path / "f", write_groups_csv=False)
    with pytest.raises(ValueError, match="train and test"):
        load_histo_dataset("imagefolder", tree.data_dir, split_files={"train": tmp_path / "t.txt", "dev": "x"})


def test_split_file_of_another_dataset_is_refused(tmp_path):
    tree = make_imagefolder_tree(tmp_path / "f", write_groups_csv=False)
    path = export_split(load_histo_dataset("imagefolder", tree.data_dir), tmp_path / "s.json")
    lung = make_lunghist700_tree(tmp_path)
    with pytest.raises(ValueError, match="for 'imagefolder', not 'lunghist700'"):
        load_histo_dataset("lunghist700", lung.data_dir, split_file=path)
    broken = {"dataset": "imagefolder", "options": {}, "parts": {"train": [["a", "0", "g"]]}}
    (tmp_path / "broken.json").write_text(json.dumps(broken))
    with pytest.raises(DataLayoutError) as error:
        load_split_file(tmp_path / "broken.json")
    assert "part 'test' missing" in str(error.value) and "train[0]" in str(error.value)


# --- provenance in split.json and the teacher check (issues 16.3, 16.6) ------------------------------------


def independent_fingerprint(path):
    """File size and the first 16 hex digits of the sha1 of its first 64 KiB, computed here from the bytes."""
    data = open(path, "rb").read()
    return f"{len(data)}:{hashlib.sha1(data[: 64 * 1024]).hexdigest()[:16]}"


def test_split_json_records_data_root_fingerprints_and_part_digests(tmp_path):
    tree = make_imagefolder_tree(tmp_path / "f")
    dd = load_histo_dataset("imagefolder", tree.data_dir, groups_csv=tree.groups_csv)
    saved = json.loads(open(export_split(dd, tmp_path / "split.json")).read())
    assert saved["data_root"] == str(tree.data_dir) and saved["group_disjoint"] is True
    assert saved["fingerprints"] == {path: independent_fingerprint(tree.data_dir / path) for path in tree.labels}
    for part in PARTS:
        assert saved["part_digests"][part]["count"] == len(dd[part])
    # An image-level split (no groups known) is never called group-disjoint.
    image_level = load_histo_dataset("imagefolder", tree.data_dir)
    assert read_provenance(image_level)["group_disjoint"] is False


def test_teacher_split_of_the_same_data_and_split_is_compatible(tmp_path):
    tree = make_imagefolder_tree(tmp_path / "f")
    dd = load_histo_dataset("imagefolder", tree.data_dir, groups_csv=tree.groups_csv, split_seed=2)
    teacher_split = export_split(dd, tmp_path / "teacher" / "split.json")
    check = compare_with_training_split(teacher_split, dd)
    assert check.ok and check.status == "compatible" and check.by_content and not check.leaked
    assert check.shared_images == tree.num_images
    check.raise_if_incompatible()
    # A copy of the same data elsewhere (another machine) is the same data, matched by content.
    shutil.copytree(tree.data_dir, tmp_path / "copy")
    copy = load_histo_dataset("imagefolder", tmp_path / "copy", groups_csv="groups.csv", split_seed=2)
    check = compare_with_training_split(teacher_split, copy)
    assert check.ok and check.teacher_root == str(tree.data_dir) and check.data_root == str(tmp_path / "copy")
    assert f"the teacher's copy of the data was at {tree.data_dir}" in check.message


def test_teacher_trained_on_this_runs_test_images_is_a_leak(tmp_path):
    tree = make_imagefolder_tree(tmp_path / "f", {"a": 12, "b": 12}, images_per_group=2)
    teacher = load_histo_dataset("imagefolder", tree.data_dir, groups_csv=tree.groups_csv, split_seed=1)
    teacher_split = export_split(teacher, tmp_path / "teacher" / "split.json")
    # Half of the images in test: some must be among the teacher's train/validation 80%, whatever the seeds.
    student = load_histo_dataset("imagefolder", tree.data_dir, groups_csv=tree.groups_csv, test_fraction=0.5)
    check = compare_with_training_split(teacher_split, student)
    seen = set(teacher["train"]["path"]) | set(teacher["validation"]["path"])
    expected = sorted(set(student["test"]["path"]) & seen)
    assert check.status == "leak" and sorted(path for path, _ in check.leaked) == expected and expected
    with pytest.raises(DataLayoutError) as error:
        check.raise_if_incompatible()
    examples = ", ".join(path for path, _ in check.leaked[:3])
    assert str(error.value) == (
        f"The teacher in {tmp_path / 'teacher'} was trained on {len(expected)} image(s) of this run's test split "
        f"(compared by content; in its train/validation parts), e.g. {examples}: train the teacher with the same "
        f"--dataset options and --split_seed, or give this run the teacher's split with --split_file {teacher_split}."
    )


def test_teacher_of_another_cohort_with_the_same_file_names_is_other_data_not_a_leak(tmp_path):
    counts = {"a": 12, "b": 12}
    cohort_a = make_imagefolder_tree(tmp_path / "hospital_a" / "images", counts, images_per_group=2, size=33)
    cohort_b = make_imagefolder_tree(tmp_path / "hospital_b" / "images", counts, images_per_group=2, size=34)
    assert set(cohort_a.labels) == set(cohort_b.labels)  # every file name coincides
    teacher = load_histo_dataset("imagefolder", cohort_a.data_dir, groups_csv="groups.csv", split_seed=1)
    teacher_split = export_split(teacher, tmp_path / "teacher" / "split.json")
    student = load_histo_dataset("imagefolder", cohort_b.data_dir, groups_csv="groups.csv", split_seed=2)
    check = compare_with_training_split(teacher_split, student)
    assert check.status == "other_data" and check.leaked == [] and check.shared_images == 0
    assert check.message == (
        f"The teacher in {tmp_path / 'teacher'} was trained on other data: none of the 24 images in its split "
        f"file {teacher_split} is among this run's 24 images (compared by content); the teacher's data root "
        f"{cohort_a.data_dir}; this run's {cohort_b.data_dir}. Train a teacher on this data first (train_teacher.py "
        "with the same --dataset, --data_dir and split options), or pass --teacher_model with the teacher trained "
        "on it."
    )
    with pytest.raises(DataLayoutError, match="trained on other data"):
        check.raise_if_incompatible()


def test_teacher_split_without_fingerprints_is_compared_by_path(tmp_path):
    tree = make_imagefolder_tree(tmp_path / "f", {"a": 12, "b": 12}, images_per_group=2)
    teacher = load_histo_dataset("imagefolder", tree.data_dir, groups_csv=tree.groups_csv, split_seed=1)
    old = json.loads(open(export_split(teacher, tmp_path / "split.json")).read())
    for key in ("fingerprints", "data_root", "part_digests"):
        del old[key]  # as written by earlier versions
    (tmp_path / "old.json").write_text(json.dumps(old))
    student = load_histo_dataset("imagefolder", tree.data_dir, groups_csv=tree.groups_csv, test_fraction=0.5)
    check = compare_with_training_split(tmp_path / "old.json", student)
    assert check.status == "leak" and not check.by_content and "compared by path" in check.message
    assert compare_with_training_split(tmp_path / "old.json", teacher).ok


def test_data_root_tag_is_stable_per_folder_and_differs_between_folders(tmp_path):
    (tmp_path / "a" / "cohort").mkdir(parents=True)
    (tmp_path / "b" / "cohort").mkdir(parents=True)
    os.symlink(tmp_path / "a" / "cohort", tmp_path / "link")
    tag = data_root_tag(tmp_path / "a" / "cohort")
    digest = hashlib.sha1(str((tmp_path / "a" / "cohort").resolve()).encode()).hexdigest()[:8]
    assert tag == f"cohort-{digest}"
    assert data_root_tag(str(tmp_path / "a" / "cohort") + "/") == tag == data_root_tag(tmp_path / "link")
    assert data_root_tag(tmp_path / "b" / "cohort") != tag
    assert data_root_tag(tmp_path / "my data: 2024").startswith("my_data_2024-")
    assert data_root_tag(tmp_path / "Норма")[: len("Норма")] == "Норма"


def test_edited_split_file_warns_which_parts_changed(tmp_path, caplog):
    tree = make_imagefolder_tree(tmp_path / "f", write_groups_csv=False)
    dd = load_histo_dataset("imagefolder", tree.data_dir, split_seed=3)
    path = export_split(dd, tmp_path / "split.json")
    with caplog.at_level(logging.WARNING, logger="modeling_amlpf.data"):
        load_histo_dataset("imagefolder", tree.data_dir, split_file=path)
    assert "differs from the split" not in caplog.text  # reloading as written: no warning
    saved = json.loads(open(path).read())
    saved["parts"]["train"].append(saved["parts"]["test"].pop())  # move one entry from test to train
    (tmp_path / "edited.json").write_text(json.dumps(saved, indent=1))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="modeling_amlpf.data"):
        edited = load_histo_dataset("imagefolder", tree.data_dir, split_file=tmp_path / "edited.json")
    before = {part: len(dd[part]) for part in PARTS}
    assert (
        f"The split file {tmp_path / 'edited.json'} differs from the split it was written as (parts changed since "
        f"export: train: {before['train']} -> {before['train'] + 1} entries (+1); test: {before['test']} -> "
        f"{before['test'] - 1} entries (-1)); it is used as it is now."
    ) in caplog.text
    assert len(edited["test"]) == before["test"] - 1
    assert read_provenance(edited)["split_source"] == "split_file (edited after export: train, test)"
