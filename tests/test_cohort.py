"""External cohorts: every image of a folder evaluated without a split, class maps, and the teacher check.

The command-line tests run the scripts as a user does (``python train_teacher.py ...`` in a subprocess) on tiny
look-alike folders and a tiny saved teacher; the rest call the library directly.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT, TEACHER_TINY
from data_trees import make_imagefolder_tree
from transformers import AutoConfig, AutoModel

from modeling_amlpf.cli.arguments import DataArguments
from modeling_amlpf.cli.run_data import RunDataError, check_teacher_split, load_split
from modeling_amlpf.data import export_split, load_histo_dataset, read_provenance
from modeling_amlpf.data.cohort import map_class_names, parse_class_map, relabel_to_model_classes
from modeling_amlpf.models.image_processing_amlpf import AmlpfImageProcessor

MODEL_CLASSES = ["normal", "tumor"]


def run_script(script: str, *args: str) -> subprocess.CompletedProcess:
    """``python <script> args`` from the repository root, as a user runs it."""
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    command = [sys.executable, str(REPO_ROOT / script), *map(str, args)]
    return subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)


def strict_json(path: Path):
    """Parse like a strict JSON parser: the bare words NaN/Infinity are refused."""

    def refuse(word):
        raise ValueError(f"{path.name} holds {word}, which is not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


@pytest.fixture(scope="module")
def teacher_a(tmp_path_factory):
    """Cohort A (classes normal/tumor, 3-image groups) and a saved tiny teacher with the split.json of cohort A
    (seed 1), as train_teacher.py leaves it: its weights do not matter to what is tested here."""
    root = tmp_path_factory.mktemp("cohorts")
    cohort = make_imagefolder_tree(root / "hospital_a" / "images", {"normal": 9, "tumor": 9}, images_per_group=3)
    teacher = AutoModel.from_config(AutoConfig.from_pretrained(TEACHER_TINY))
    teacher.config.id2label = dict(enumerate(MODEL_CLASSES))
    teacher.config.label2id = {name: i for i, name in enumerate(MODEL_CLASSES)}
    teacher = type(teacher)(teacher.config)
    folder = root / "teacher_a"
    teacher.save_pretrained(folder)
    AmlpfImageProcessor.from_pretrained(TEACHER_TINY).save_pretrained(folder)
    dd = load_histo_dataset("imagefolder", cohort.data_dir, groups_csv=str(cohort.groups_csv), split_seed=1)
    export_split(dd, folder / "split.json")
    return root, cohort, folder


# ------------------------------------------------------------------------------------------ command line
def test_external_cohort_with_a_class_map_evaluates_every_image(teacher_a, tmp_path):
    """Another hospital's folders ("Tumour", "Carcinoma"): mapped onto the model's tumor class by a YAML class
    map, every image is a test image; the model's class normal is absent: allowed, its recall and the AUROC are
    undefined and written as null (strict JSON), and the evaluation says so."""
    _, _, teacher = teacher_a
    cohort = make_imagefolder_tree(tmp_path / "hospital_b", {"Tumour": 4, "Carcinoma": 3}, write_groups_csv=False)
    class_map = tmp_path / "class_map.yaml"
    class_map.write_text("Tumour: tumor\nCarcinoma: tumor\n")
    out = tmp_path / "eval"
    result = run_script(
        "train_teacher.py", "--dataset", "imagefolder", "--data_dir", cohort.data_dir, "--config", "none",
        "--do_train", "False", "--model_name_or_path", teacher, "--external_cohort", "--class_map", class_map,
        "--output_dir", out, "--use_cpu", "True", "--disable_tqdm", "True",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    log = result.stdout + result.stderr
    assert "no image of the model's class(es) ['normal']" in log and "Carcinoma -> tumor" in log

    results = strict_json(out / "test_results.json")
    assert results["test_samples"] == 7  # every image of the cohort, no split
    assert results["test_macro_auroc"] is None and results["test_recall_normal"] is None
    assert results["test_recall_tumor"] is not None
    assert strict_json(out / "all_results.json")["test_macro_auroc"] is None
    summary = strict_json(out / "evaluation.json")
    assert summary["external_cohort"] is True and summary["class_names"] == MODEL_CLASSES
    assert summary["class_map"] == {"Carcinoma": "tumor", "Tumour": "tumor"}
    assert summary["classes_absent_from_data"] == ["normal"]
    assert summary["metrics"]["macro_auroc"] is None
    assert sum(map(sum, summary["confusion_matrix"])) == 7 and sum(summary["confusion_matrix"][0]) == 0
    matrix = strict_json(out / "test_confusion_matrix.json")
    assert matrix["class_names"] == MODEL_CLASSES and matrix["title"] == "Teacher, external cohort split (imagefolder)"
    assert (out / "test_confusion_matrix.png").is_file()
    split = strict_json(out / "split.json")  # the images evaluated, under the cohort's own class names
    assert split["class_names"] == ["Carcinoma", "Tumour"] and len(split["parts"]["test"]) == 7
    assert not split["parts"]["train"] and not split["parts"]["validation"]
    markdown = (out / "evaluation.md").read_text()
    assert "absent from the data: `normal`" in markdown and "undefined on this data, not zero" in markdown
    assert not (teacher / "eval_results.json").exists()  # the teacher's folder is left alone


def test_cohort_classes_the_model_lacks_are_refused_with_the_fix(teacher_a, tmp_path):
    _, _, teacher = teacher_a
    cohort = make_imagefolder_tree(tmp_path / "hospital_b", {"Tumour": 3, "Normal tissue": 3}, write_groups_csv=False)
    result = run_script(
        "train_teacher.py", "--dataset", "imagefolder", "--data_dir", cohort.data_dir, "--config", "none",
        "--do_train", "False", "--model_name_or_path", teacher, "--external_cohort", "--output_dir", tmp_path / "e",
        "--use_cpu", "True",
    )
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert (
        f"the data has the class(es) ['Normal tissue', 'Tumour'], which the teacher {teacher} lacks (its classes: "
        "['normal', 'tumor']); the model cannot predict them. Map each onto a model class with --class_map "
        '"Normal tissue=normal"'
    ) in result.stderr
    assert not (tmp_path / "e" / "test_results.json").exists()


def test_student_refuses_the_teacher_of_another_cohort_with_the_same_file_names(teacher_a, tmp_path):
    """Cohort B has exactly cohort A's file names and class folders, but other images: its student must not
    distill from A's teacher, and the reason is other data, not a false "trained on your test split"."""
    root, cohort_a, teacher = teacher_a
    counts = {"normal": 9, "tumor": 9}
    cohort_b = make_imagefolder_tree(tmp_path / "hospital_b" / "images", counts, images_per_group=3, size=40)
    assert set(cohort_b.labels) == set(cohort_a.labels)
    result = run_script(
        "distill_student.py", "--dataset", "imagefolder", "--data_dir", cohort_b.data_dir, "--groups_csv",
        cohort_b.groups_csv, "--config", "none", "--student_model", REPO_ROOT / "configs/models/student-tiny",
        "--teacher_model", teacher, "--output_dir", tmp_path / "student", "--num_train_epochs", "1", "--use_cpu",
        "True",
    )
    assert result.returncode == 2, result.stderr[-3000:]
    assert f"The teacher in {teacher} was trained on other data" in result.stderr
    assert f"the teacher's data root {cohort_a.data_dir}; this run's {cohort_b.data_dir}" in result.stderr
    assert "test split" not in result.stderr
    assert not (tmp_path / "student" / "model.safetensors").exists()


# ------------------------------------------------------------------------------------------ library
def test_teacher_check_accepts_the_same_data_and_names_other_data(teacher_a, tmp_path, caplog):
    _, cohort_a, teacher = teacher_a
    same = load_histo_dataset("imagefolder", cohort_a.data_dir, groups_csv=str(cohort_a.groups_csv), split_seed=1)
    check_teacher_split(teacher, same)  # compatible: no error
    missing = tmp_path / "no_split"
    missing.mkdir()
    with caplog.at_level("WARNING"):
        check_teacher_split(missing, same)
    assert "split.json not found: cannot check that the teacher never saw this split's test images" in caplog.text
    for seed in range(2, 12):  # another split of the same data: its test images were the teacher's training images
        other = load_histo_dataset("imagefolder", cohort_a.data_dir, groups_csv=str(cohort_a.groups_csv),
                                   split_seed=seed)
        if set(other["test"]["path"]) - set(same["test"]["path"]):
            break
    with pytest.raises(ValueError, match=r"was trained on \d+ image\(s\) of this run's test split"):
        check_teacher_split(teacher, other)


def test_load_histo_dataset_external_cohort_puts_every_image_in_test(tmp_path):
    tree = make_imagefolder_tree(tmp_path / "cohort", {"a": 4, "b": 2}, write_groups_csv=False)
    dd = load_histo_dataset("imagefolder", tree.data_dir, external_cohort=True)
    assert {part: len(ds) for part, ds in dd.items()} == {"train": 0, "validation": 0, "test": 6}
    assert sorted(dd["test"]["path"]) == sorted(tree.labels)
    assert [tree.labels[p] for p in dd["test"]["path"]] == dd["test"]["label"]
    provenance = read_provenance(dd)
    assert provenance["split_source"].startswith("external cohort") and provenance["options"]["external_cohort"]
    with pytest.raises(ValueError, match="cannot be combined with test_fraction"):
        load_histo_dataset("imagefolder", tree.data_dir, external_cohort=True, test_fraction=0.5)


def test_a_whole_test_fraction_or_an_empty_train_split_file_points_to_the_external_cohort_mode(tmp_path):
    tree = make_imagefolder_tree(tmp_path / "cohort", {"a": 6, "b": 6}, images_per_group=2)
    with pytest.raises(ValueError, match="external_cohort=True"):
        load_histo_dataset("imagefolder", tree.data_dir, test_fraction=1.0)
    args = DataArguments(dataset="imagefolder", data_dir=str(tree.data_dir), test_fraction=1.0)
    with pytest.raises(RunDataError, match="--external_cohort with --do_train False --model_name_or_path DIR"):
        load_split(args, 1)
    (tmp_path / "train.txt").write_text("")
    (tmp_path / "test.txt").write_text("".join(f"{path} {label}\n" for path, label in tree.labels.items()))
    args = DataArguments(dataset="imagefolder", data_dir=str(tree.data_dir),
                         train_split_file=str(tmp_path / "train.txt"), test_split_file=str(tmp_path / "test.txt"))
    with pytest.raises(RunDataError, match="split file\\(s\\) give an empty train part.*--external_cohort"):
        load_split(args, 1)
    assert len(load_split(args, 1, training=False)["test"]) == 12  # an evaluation needs only a test part


def test_parse_class_map_inline_yaml_and_json(tmp_path):
    assert parse_class_map("Tumour=tumor, Normal tissue = normal") == {"Tumour": "tumor", "Normal tissue": "normal"}
    assert parse_class_map(None) == {} and parse_class_map("") == {}
    decomposed = "Ade\u0301nocarcinome"  # NFD, as a macOS folder name
    assert parse_class_map(f"{decomposed}=adenocarcinoma") == {"Adénocarcinome": "adenocarcinoma"}
    (tmp_path / "map.json").write_text(json.dumps({"Normal tissue": "normal"}))
    assert parse_class_map(str(tmp_path / "map.json")) == {"Normal tissue": "normal"}
    (tmp_path / "map.yaml").write_text("Tumour: tumor\n")
    assert parse_class_map(str(tmp_path / "map.yaml")) == {"Tumour": "tumor"}
    with pytest.raises(ValueError, match="'Tumour' is not 'data name=model name'"):
        parse_class_map("Tumour")
    with pytest.raises(ValueError, match="mapped twice"):
        parse_class_map("a=x,a=y")
    with pytest.raises(FileNotFoundError, match="missing.yaml does not exist"):
        parse_class_map(str(tmp_path / "missing.yaml"))
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(ValueError, match="must hold a mapping"):
        parse_class_map(str(tmp_path / "list.yaml"))


def test_map_class_names_merges_relabels_and_names_every_problem(tmp_path):
    ids, absent = map_class_names(
        ["Carcinoma", "normal", "Tumour"], ["adenoma", "normal", "tumor"], {"Carcinoma": "tumor", "Tumour": "tumor"},
        data_source="the data", model_source="the model",
    )
    assert ids == [2, 1, 2] and absent == ["adenoma"]
    with pytest.raises(ValueError) as error:
        map_class_names(["x", "Tumour"], ["normal", "tumor"], {"Tumor": "tumor", "x": "cancer"},
                        data_source="the data", model_source="the model")
    message = str(error.value)
    assert "names ['Tumor'], which are not classes of the data" in message
    assert "maps onto ['cancer'], which are not classes of the model" in message
    assert "the data has the class(es) ['Tumour'], which the model lacks" in message

    tree = make_imagefolder_tree(tmp_path / "cohort", {"Normal tissue": 2, "Tumour": 3}, write_groups_csv=False)
    dd = load_histo_dataset("imagefolder", tree.data_dir, external_cohort=True)
    relabelled = relabel_to_model_classes(dd, MODEL_CLASSES, [0, 1])
    assert relabelled["test"].features["label"].names == MODEL_CLASSES
    expected = {path: MODEL_CLASSES.index("normal" if path.startswith("Normal") else "tumor") for path in tree.labels}
    assert dict(zip(relabelled["test"]["path"], relabelled["test"]["label"])) == expected
    assert read_provenance(relabelled)["data_root"] == read_provenance(dd)["data_root"]  # provenance kept
    assert relabelled["test"]["fingerprint"] == dd["test"]["fingerprint"]
