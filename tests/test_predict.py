"""Batch prediction (predict.py, modeling_amlpf.prediction): probabilities, overlay geometry, bad input, the CLI."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import REPO_ROOT, STUDENT_TINY
from data_trees import add_os_clutter, write_non_image, write_truncated_jpeg
from matplotlib.patches import Rectangle
from PIL import Image

import predict
from modeling_amlpf import AmlpfImageProcessor
from modeling_amlpf.evaluation.prediction import (
    UnreadableImageError,
    choose_overlays,
    class_colors,
    crop_boxes,
    find_images,
    load_model_and_processor,
    predict_files,
    render_overlay,
)

# (height, width): as is; upsized (100 x 140 -> 128 x 179); portrait upsized (125 x 90 -> 177 x 128, floored);
# a long side past the tiny preset's large-stride threshold (256).
SIZES = [(150, 170), (100, 140), (125, 90), (130, 260)]


def _processor() -> AmlpfImageProcessor:
    return AmlpfImageProcessor.from_pretrained(STUDENT_TINY)


def _write_images(folder, sizes=SIZES, seed=0) -> list[str]:
    """Smooth random colour fields (so that crops differ), alternately PNG and JPEG."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for number, (height, width) in enumerate(sizes):
        coarse = rng.integers(0, 256, (height // 16 + 1, width // 16 + 1, 3), dtype=np.uint8)
        image = Image.fromarray(coarse).resize((width, height), Image.BILINEAR)
        path = folder / f"tile_{number}.{'png' if number % 2 == 0 else 'jpg'}"
        image.save(path)
        paths.append(str(path))
    return paths


def _save_checkpoint(model, path, tokenizer=None):
    model.eval().save_pretrained(path)
    _processor().save_pretrained(path)
    if tokenizer is not None:
        tokenizer.save_pretrained(path)
    return str(path)


def _read_csv(path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _unnormalise(view: torch.Tensor, processor) -> np.ndarray:
    """(3, S, S) normalised float -> (S, S, 3) uint8, inverting the processor's normalisation."""
    mean = torch.tensor(processor.image_mean).view(3, 1, 1)
    std = torch.tensor(processor.image_std).view(3, 1, 1)
    return ((view * std + mean) * 255).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()


@pytest.mark.parametrize("which", ["student", "teacher"])
def test_csv_probabilities_equal_the_models_softmax_on_the_same_views(tmp_path, tiny_student, tiny_teacher, which):
    model = (tiny_student[0] if which == "student" else tiny_teacher).eval()
    processor = _processor()
    paths = _write_images(tmp_path / "images")
    summary = predict_files(model, processor, paths, tmp_path / "out", batch_size=3, num_workers=0, device="cpu",
                            max_overlays=0, progress=False)
    rows = _read_csv(tmp_path / "out" / "predictions.csv")
    names = [model.config.id2label[i] for i in range(model.config.num_labels)]
    assert [row["path"] for row in rows] == paths
    predicted = []
    for path, row in zip(paths, rows, strict=True):
        with torch.no_grad():
            out = model(**processor(Image.open(path), return_tensors="pt"))
        expected = torch.softmax(out.logits[0].double(), dim=-1).numpy()
        got = np.array([float(row[f"prob_{name}"]) for name in names])
        np.testing.assert_allclose(got, expected, atol=2e-6)
        assert got.sum() == pytest.approx(1.0, abs=1e-5)
        assert row["prediction"] == names[int(expected.argmax())] and row["error"] == ""
        assert float(row["probability"]) == pytest.approx(expected.max(), abs=2e-6)
        assert row["pred_global_view"] == names[int(out.view_logits[0, -1].argmax())]
        if which == "student":
            levels = model.config.prompt_levels
            assert len(levels) == out.level_logits.shape[1] == 3
            for level, level_logits in zip(levels, out.level_logits[0], strict=True):
                level_probs = torch.softmax(level_logits.double(), dim=-1)
                assert row[f"pred_level_{level}"] == names[int(level_probs.argmax())]
                assert float(row[f"prob_level_{level}"]) == pytest.approx(float(level_probs.max()), abs=2e-6)
        else:
            assert not any(column.startswith("pred_level_") for column in row)
        predicted.append(row["prediction"])
    assert summary["counts"] == {name: predicted.count(name) for name in names}
    assert summary["num_images"] == summary["num_predicted"] == len(paths) and summary["num_failed"] == 0
    assert summary["kind"] == which and summary["device"] == "cpu" and summary["precision"] == "fp32"
    assert json.loads((tmp_path / "out" / "summary.json").read_text()) == summary


def test_overlay_boxes_sit_where_the_processor_cut_its_evaluation_crops(tmp_path):
    processor = _processor()
    paths = _write_images(tmp_path / "images")
    for path, (height, width) in zip(paths, SIZES, strict=True):
        image = Image.open(path).convert("RGB")
        boxes = crop_boxes(processor, height, width)
        assert len(boxes) == processor.num_crops == 8
        # Independent of crop_boxes: the upsized size by hand (short side to 128, long side floored, as
        # torchvision's Resize), and the pixels the processor put in each crop view, found in the upsized image at
        # the box scaled back up.
        short, long = min(height, width), max(height, width)
        resized_short, resized_long = (128, int(128 * long / short)) if short < 128 else (short, long)
        resized_h, resized_w = (resized_short, resized_long) if height <= width else (resized_long, resized_short)
        resized = np.asarray(processor.resize_short_side(image)).astype(int)
        assert resized.shape[:2] == (resized_h, resized_w)
        pixel_values = processor(image, return_tensors="pt")["pixel_values"][0]
        for view, (left, top, right, bottom) in enumerate(boxes):
            x0, y0 = round(left * resized_w / width), round(top * resized_h / height)
            assert (round(right * resized_w / width) - x0, round(bottom * resized_h / height) - y0) == (64, 64)
            crop = _unnormalise(pixel_values[view], processor).astype(int)
            assert np.abs(crop - resized[y0 : y0 + 64, x0 : x0 + 64]).max() <= 1, (path, view)
        # The boxes are the evaluation lattice (8 distinct windows), not random training positions.
        assert len({box[:2] for box in boxes}) == 8
        assert crop_boxes(processor, height, width) == boxes


def test_overlay_draws_each_crop_box_in_its_own_class_colour_and_is_written(tmp_path, tiny_student):
    model, _ = tiny_student
    model.eval()
    processor = _processor()
    paths = _write_images(tmp_path / "images")
    names = [model.config.id2label[i] for i in range(model.config.num_labels)]
    height, width = SIZES[1]
    # Every view says another class than its neighbours, so that a box drawn in another view's colour shows.
    view_probs = np.full((9, len(names)), 0.1)
    view_probs[np.arange(9), [(view * 3 + 1) % len(names) for view in range(9)]] = 0.7
    boxes = crop_boxes(processor, height, width)
    preview = np.asarray(Image.open(paths[1]).convert("RGB").resize((70, 50)))  # a downsized preview
    figure = render_overlay(preview, (height, width), boxes, names, np.array([0.1, 0.2, 0.3, 0.4]), view_probs,
                            np.eye(3, len(names)) * 0.6 + 0.1, model.config.prompt_levels)
    image_axes = figure.axes[0]
    drawn = {patch.get_label(): patch for patch in image_axes.patches if isinstance(patch, Rectangle)}
    colors = class_colors(len(names))
    for number, (left, top, right, bottom) in enumerate(boxes, start=1):
        patch = drawn[f"crop {number}"]
        assert patch.get_xy() == pytest.approx((left, top))
        assert (patch.get_width(), patch.get_height()) == pytest.approx((right - left, bottom - top))
        assert patch.get_edgecolor() == pytest.approx(colors[int(view_probs[number - 1].argmax())])
    assert drawn["global view"].get_edgecolor() == pytest.approx(colors[int(view_probs[-1].argmax())])
    assert image_axes.images[0].get_extent() == [0, width, height, 0]  # the preview spans the original pixels
    assert {text.get_text() for text in image_axes.get_legend().get_texts()} == set(names)

    summary = predict_files(model, processor, paths, tmp_path / "out", batch_size=2, device="cpu", max_overlays=3,
                            overlay_processes=1, progress=False)  # drawn in a spawned process
    rows = _read_csv(tmp_path / "out" / "predictions.csv")
    assert summary["overlays"] == 3 and summary["overlay_processes"] == 1
    assert [bool(row["overlay"]) for row in rows] == [True, True, True, False]
    for row in rows[:3]:
        with Image.open(tmp_path / "out" / row["overlay"]) as png:
            assert png.format == "PNG" and png.width > 300 and png.height > 200
    written = sorted(os.listdir(tmp_path / "out" / "overlays"))
    assert written == sorted(os.path.basename(row["overlay"]) for row in rows[:3])


def _bad_folder(root):
    good = _write_images(root / "images", sizes=SIZES[:2])
    truncated = str(write_truncated_jpeg(root / "images" / "sub" / "cut.jpg"))
    not_image = str(write_non_image(root / "images" / "page.png"))
    add_os_clutter(root / "images", "tile_0.png")
    (root / "images" / "notes.txt").write_text("not an image")
    return good, truncated, not_image


def test_unreadable_files_are_reported_in_the_csv_and_the_run_goes_on(tmp_path, tiny_teacher):
    good, truncated, not_image = _bad_folder(tmp_path)
    found = find_images([tmp_path / "images"])
    assert sorted(found.paths) == sorted(good + [truncated, not_image])  # clutter and .txt are not inputs
    assert [os.path.basename(p) for p in found.skipped] == ["notes.txt"]
    summary = predict_files(tiny_teacher.eval(), _processor(), found.paths, tmp_path / "out", batch_size=2,
                            device="cpu", max_overlays=0, skipped=found.skipped, progress=False)
    rows = {row["path"]: row for row in _read_csv(tmp_path / "out" / "predictions.csv")}
    assert set(rows) == set(found.paths)
    for path in (truncated, not_image):
        assert rows[path]["prediction"] == "" and rows[path]["prob_normal"] == ""
        assert rows[path]["error"]
    assert "OSError" in rows[truncated]["error"] and "page.png" in rows[not_image]["error"]
    for path in good:
        assert rows[path]["error"] == "" and rows[path]["prediction"] in summary["counts"]
    assert summary["num_failed"] == 2 and summary["num_predicted"] == 2
    assert sorted(f["path"] for f in summary["failures"]) == sorted([truncated, not_image])
    assert summary["skipped_files"]["count"] == 1


def test_strict_stops_naming_the_file_and_an_empty_folder_is_a_clear_error(tmp_path, tiny_teacher, capsys):
    checkpoint = _save_checkpoint(tiny_teacher, tmp_path / "teacher")
    _, truncated, _ = _bad_folder(tmp_path)
    os.remove(os.path.join(tmp_path, "images", "page.png"))
    code = predict.main(["--model", checkpoint, str(tmp_path / "images"), "--output_dir", str(tmp_path / "out"),
                         "--num_workers", "0", "--no_progress", "--strict"])
    error = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and truncated in error[-1] and "--strict" in error[-1]
    assert not any("Traceback" in line for line in error)

    empty = tmp_path / "empty"
    add_os_clutter(empty)
    (empty / "readme.txt").write_text("no images here")
    code = predict.main(["--model", checkpoint, str(empty), "--output_dir", str(tmp_path / "out2")])
    error = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(error) == 1 and error[0].startswith("predict.py: error: no image files in folder")
    assert str(empty) in error[0]
    assert not (tmp_path / "out2").exists()

    code = predict.main(["--model", str(tmp_path / "nowhere"), str(tmp_path / "images")])
    error = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(error) == 1 and "nowhere" in error[0]


def test_csv_input_resolves_paths_next_to_the_csv_and_reports_missing_rows(tmp_path, tiny_teacher):
    paths = _write_images(tmp_path / "data" / "images", sizes=SIZES[:2])
    listing = tmp_path / "data" / "tiles.csv"
    listing.write_text("slide,file\nA,images/tile_0.png\nB,images/missing.png\nC,images/tile_1.jpg\n")
    with pytest.raises(ValueError, match="no column 'path'.*slide, file.*--path_column"):
        find_images([], listing)
    found = find_images([], listing, path_column="file")
    assert [os.path.realpath(p) for p in found.paths] == [
        os.path.realpath(paths[0]), os.path.realpath(tmp_path / "data" / "images" / "missing.png"),
        os.path.realpath(paths[1]),
    ]
    predict_files(tiny_teacher.eval(), _processor(), found.paths, tmp_path / "out", device="cpu", max_overlays=0,
                  progress=False)
    rows = _read_csv(tmp_path / "out" / "predictions.csv")
    assert [row["error"] == "" for row in rows] == [True, False, True]
    assert "not found" in rows[1]["error"] and "missing.png" in rows[1]["error"]


def test_checkpoint_code_loaded_with_trust_remote_code_predicts_the_same(tmp_path, tiny_teacher):
    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    checkpoint = _save_checkpoint(tiny_teacher, tmp_path / "teacher")
    remote_model = get_class_from_dynamic_module("modeling_amlpf.AmlpfTeacherForImageClassification", checkpoint)
    remote_processor = get_class_from_dynamic_module("image_processing_amlpf.AmlpfImageProcessor", checkpoint)
    assert remote_model.__module__.startswith("transformers_modules")
    paths = _write_images(tmp_path / "images", sizes=SIZES[:2])
    remote = predict_files(remote_model.from_pretrained(checkpoint), remote_processor.from_pretrained(checkpoint),
                           paths, tmp_path / "remote", device="cpu", max_overlays=1, progress=False)
    model, processor = load_model_and_processor(checkpoint, trust_remote_code=True)
    local = predict_files(model, processor, paths, tmp_path / "local", device="cpu", max_overlays=0, progress=False)
    assert remote["model_class"].startswith("transformers_modules") and remote["overlays"] == 1
    remote_rows, local_rows = (_read_csv(tmp_path / name / "predictions.csv") for name in ("remote", "local"))
    for a, b in zip(remote_rows, local_rows, strict=True):
        assert a["prediction"] == b["prediction"]
        for name in local["class_names"]:
            assert float(a[f"prob_{name}"]) == pytest.approx(float(b[f"prob_{name}"]), abs=1e-5)


def test_help_exits_zero_and_lists_the_flags(capsys):
    with pytest.raises(SystemExit) as exit_info:
        predict.parse_args(["-h"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--model", "--csv", "--path_column", "--batch_size", "--num_workers", "--device", "--max_overlays",
                 "--strict", "--trust_remote_code", "IMAGE_OR_FOLDER"):
        assert flag in text
    args, inputs = predict.parse_args(["a.png", "--model", "m", "b", "--batch_size", "3", "--strict"])
    assert inputs == ["a.png", "b"] and args.batch_size == 3 and args.strict and args.model == "m"


def test_command_line_run_writes_csv_summary_and_overlays(tmp_path, tiny_student):
    model, tokenizer = tiny_student
    checkpoint = _save_checkpoint(model, tmp_path / "student", tokenizer)
    paths = _write_images(tmp_path / "images")
    add_os_clutter(tmp_path / "images", "tile_0.png")
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"))
    result = subprocess.run(
        [sys.executable, "predict.py", "--model", checkpoint, str(tmp_path / "images"), paths[0],
         "--output_dir", str(tmp_path / "preds"), "--batch_size", "3", "--num_workers", "1", "--max_overlays", "2"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = _read_csv(tmp_path / "preds" / "predictions.csv")
    assert sorted(row["path"] for row in rows) == sorted(paths)  # the file named twice is predicted once
    names = [model.config.id2label[i] for i in range(model.config.num_labels)]
    for row in rows:
        assert sum(float(row[f"prob_{name}"]) for name in names) == pytest.approx(1.0, abs=1e-4)
        assert row["prediction"] in names
        assert all(row[f"pred_level_{level}"] in names for level in model.config.prompt_levels)
    summary = json.loads((tmp_path / "preds" / "summary.json").read_text())
    assert summary["num_images"] == len(paths) and sum(summary["counts"].values()) == len(paths)
    assert summary["model"] == checkpoint and summary["device"] == "cpu" and summary["images_per_second"] > 0
    assert summary["kind"] == "student" and summary["num_workers"] == 1 and summary["overlays"] == 2
    assert len(os.listdir(tmp_path / "preds" / "overlays")) == 2


def test_split_file_input_lists_one_part_relative_to_its_data_root(tmp_path):
    paths = _write_images(tmp_path / "data" / "images", sizes=SIZES[:3])
    split = {
        "dataset": "imagefolder", "options": {}, "data_root": str(tmp_path / "data"),
        "parts": {"train": [["images/tile_0.png", 0, "a"]], "test": [["images/tile_2.png", 1, "b"],
                                                                      ["images/tile_1.jpg", 0, "c"]]},
    }
    split_file = tmp_path / "split.json"
    split_file.write_text(json.dumps(split))
    assert find_images([], split_file=split_file).paths == [paths[2], paths[1]]
    assert find_images([], split_file=split_file, split_part="train").paths == [paths[0]]
    moved = tmp_path / "moved"
    (tmp_path / "data").rename(moved)
    with pytest.raises(ValueError, match="--data_dir"):
        find_images([], split_file=split_file)
    assert find_images([], split_file=split_file, data_dir=moved).paths == [
        str(moved / "images" / "tile_2.png"), str(moved / "images" / "tile_1.jpg")
    ]
    with pytest.raises(ValueError, match="no part 'validation'"):
        find_images([], split_file=split_file, split_part="validation", data_dir=moved)


# ----------------------------------------------------------------------------------------------------------
# Odd inputs (issue 23): every row and the summary are written; checkpoints that cannot be used are named
# ----------------------------------------------------------------------------------------------------------


def test_every_row_and_the_summary_are_written_for_odd_names_and_sizes(tmp_path, tiny_teacher):
    from data_trees import write_declared_png, write_strip

    good = _write_images(tmp_path / "images", sizes=SIZES[:2])
    latin1 = os.fsencode(tmp_path / "images") + b"/latin1_\xe9\xff.png"  # not UTF-8: Python holds surrogates
    with open(latin1, "wb") as handle:
        handle.write(open(good[0], "rb").read())
    strip = str(write_strip(tmp_path / "images" / "strip.png", 1, 5000))
    bomb = str(write_declared_png(tmp_path / "images" / "bomb.png", 100_000, 100_000))
    found = find_images([tmp_path / "images"])
    assert len(found.paths) == 5
    summary = predict_files(tiny_teacher.eval(), _processor(), found.paths, tmp_path / "out", batch_size=2,
                            device="cpu", max_overlays=None, overlay_processes=0, progress=False)
    rows = {row["path"]: row for row in _read_csv(tmp_path / "out" / "predictions.csv")}
    escaped = str(tmp_path / "images") + "/latin1_\\xe9\\xff.png"
    assert set(rows) == {*good, escaped, strip, bomb}
    assert rows[escaped]["error"] == "" and rows[escaped]["prob_normal"] == rows[good[0]]["prob_normal"]
    assert "1x5000 px" in rows[strip]["error"] and "max_aspect_ratio=16" in rows[strip]["error"]
    assert "decompression bomb" in rows[bomb]["error"]
    saved = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert saved["num_predicted"] == summary["num_predicted"] == 3 and saved["num_failed"] == 2
    assert sorted(f["path"] for f in saved["failures"]) == sorted([strip, bomb])
    assert os.path.isfile(tmp_path / "out" / rows[escaped]["overlay"])  # a UTF-8 overlay name


def test_a_run_where_no_file_reads_still_writes_its_rows_and_summary(tmp_path, tiny_teacher):
    from data_trees import write_strip

    paths = [str(write_strip(tmp_path / f"strip_{n}.png", 5000, 1)) for n in range(2)]
    with pytest.raises(UnreadableImageError, match="none of the 2 images could be read"):
        predict_files(tiny_teacher.eval(), _processor(), paths, tmp_path / "out", device="cpu", progress=False)
    assert [row["path"] for row in _read_csv(tmp_path / "out" / "predictions.csv")] == paths
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["num_failed"] == 2


def test_a_checkpoint_without_its_processor_config_is_refused_not_defaulted(tmp_path, tiny_teacher, capsys):
    from modeling_amlpf.cli.run_data import RunDataError, load_processor

    checkpoint = _save_checkpoint(tiny_teacher, tmp_path / "teacher")
    os.remove(os.path.join(checkpoint, "preprocessor_config.json"))
    images = _write_images(tmp_path / "images", sizes=SIZES[:1])
    capsys.readouterr()  # the progress bars of the save
    code = predict.main(["--model", checkpoint, images[0], "--output_dir", str(tmp_path / "out"), "--no_progress"])
    error = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(error) == 1 and "has no preprocessor_config.json" in error[0] and checkpoint in error[0]
    with pytest.raises(RunDataError, match=r"preprocessor_config\.json not found: the checkpoint .* does not record"):
        load_processor(checkpoint, str(STUDENT_TINY))  # the evaluated checkpoint's views, never a fallback's
    assert load_processor(None, str(STUDENT_TINY)).crop_size == _processor().crop_size  # training: the preset's


class _Payload:
    """An object that a weights-only unpickler refuses."""


def test_a_checkpoint_whose_weights_are_a_refused_pickle_is_one_line_exit_2(tmp_path, tiny_teacher, capsys):
    checkpoint = _save_checkpoint(tiny_teacher, tmp_path / "teacher")
    os.remove(os.path.join(checkpoint, "model.safetensors"))
    torch.save({**tiny_teacher.state_dict(), "payload": _Payload()}, os.path.join(checkpoint, "pytorch_model.bin"))
    images = _write_images(tmp_path / "images", sizes=SIZES[:1])
    capsys.readouterr()  # the progress bars of the save
    code = predict.main(["--model", checkpoint, images[0], "--output_dir", str(tmp_path / "out"), "--no_progress"])
    error = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(error) == 1, error
    assert f"the weights file {checkpoint}/pytorch_model.bin is a pickle that torch.load(weights_only" in error[0]
    assert "_Payload" in error[0] and "weights_only` set to `False`" not in error[0]


def test_refused_teacher_weights_end_the_training_script_with_one_line_and_exit_2(tmp_path):
    from conftest import TEACHER_TINY
    from data_trees import make_imagefolder_tree

    tree = make_imagefolder_tree(tmp_path / "data", {"normal": 3, "tumor": 3}, write_groups_csv=False)
    weights = tmp_path / "uni.bin"
    torch.save({"pos_embed": torch.zeros(1), "payload": _Payload()}, weights)
    env = dict(os.environ, HF_HUB_OFFLINE="1", AMLPF_CACHE=str(tmp_path / "cache"), OMP_NUM_THREADS="1")
    result = subprocess.run(
        [sys.executable, "train_teacher.py", "--dataset", "imagefolder", "--data_dir", str(tree.data_dir),
         "--teacher_config", str(TEACHER_TINY), "--teacher_weights", str(weights), "--output_dir",
         str(tmp_path / "out"), "--use_cpu", "True"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    errors = [line for line in result.stderr.splitlines() if ": error: " in line or "Error" in line]
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and len(errors) == 1
    assert errors[0].startswith("train_teacher.py: error: ") and f"{weights} is not a plain state dict" in errors[0]


def test_saved_weights_have_the_permissions_of_the_other_files(tmp_path, tiny_teacher):
    previous = os.umask(0o022)
    try:
        checkpoint = _save_checkpoint(tiny_teacher, tmp_path / "teacher")
    finally:
        os.umask(previous)
    modes = {name: os.stat(os.path.join(checkpoint, name)).st_mode & 0o777 for name in os.listdir(checkpoint)}
    assert modes["model.safetensors"] == modes["config.json"] == 0o644, modes


def test_trust_remote_code_keeps_the_package_code_for_its_own_checkpoints(tmp_path, tiny_teacher):
    """What docs/prediction.md says the flag does: a checkpoint of this package loads with the installed code."""
    checkpoint = _save_checkpoint(tiny_teacher, tmp_path / "teacher")
    model, processor = load_model_and_processor(checkpoint, trust_remote_code=True)
    assert type(model).__module__ == "modeling_amlpf.models.modeling_amlpf"
    assert type(processor).__module__ == "modeling_amlpf.models.image_processing_amlpf"


def test_link_loops_among_the_inputs_are_named(tmp_path, caplog):
    images = _write_images(tmp_path / "images", sizes=SIZES[:1])
    os.symlink(".", tmp_path / "images" / "again")  # a folder loop inside an input folder: skipped, named
    os.symlink("loop.png", tmp_path / "loop.png")  # a file loop named on the command line: refused, named
    assert find_images([tmp_path / "images"]).paths == images
    assert "again: a symbolic link loop" in caplog.text
    with pytest.raises(ValueError, match=r"loop\.png: a symbolic link that leads to no file"):
        find_images([tmp_path / "loop.png"])


# ------------------------------------------------------------------------------------------------ labels, overlays
def test_overlays_are_chosen_across_predicted_classes_mistakes_first():
    # 12 images: the first 8 all predicted class 0 (the old "first N" choice drew only these)
    predicted = [0] * 8 + [1, 2, 2, None]
    assert choose_overlays(predicted, 3) == [0, 8, 9]  # one of each predicted class in turn
    assert choose_overlays(predicted, 5) == [0, 1, 8, 9, 10]  # then the next of each, in input order
    assert 11 not in choose_overlays(predicted, 12) and len(choose_overlays(predicted, 12)) == 11  # unreadable
    # with labels: mistakes first (most confident first, across classes), then correct ones across classes
    labels = [0, 0, 1, 0, 2, 0, 0, 0, 1, 0, 2, 1]
    confidence = [0.5, 0.5, 0.6, 0.5, 0.9, 0.5, 0.5, 0.5, 0.7, 0.8, 0.5, 0.5]
    mistakes = {2, 4, 9}  # 2 and 4 (predicted 0), 9 (predicted 2)
    assert choose_overlays(predicted, 2, labels, confidence) == [4, 9]  # the surest mistake of each class
    assert set(choose_overlays(predicted, 3, labels, confidence)) == mistakes
    chosen = choose_overlays(predicted, 5, labels, confidence)
    assert mistakes <= set(chosen) and {0, 8} <= set(chosen)  # then a correct one of classes 0 and 1


def test_split_input_adds_the_label_column_per_class_accuracy_and_labelled_overlays(tmp_path, tiny_teacher):
    model = tiny_teacher.eval()
    names = [model.config.id2label[i] for i in range(model.config.num_labels)]
    paths = _write_images(tmp_path / "data" / "images", sizes=[(128, 128)] * 8, seed=3)
    truth = [0, 1, 2, 3, 0, 1, 0, 0][: len(paths)]
    truth = [label % len(names) for label in truth]
    split = {"dataset": "imagefolder", "options": {}, "data_root": str(tmp_path / "data"), "class_names": names,
             "parts": {"train": [["images/tile_0.png", 0, "t0"]],
                       "test": [[f"images/{os.path.basename(p)}", t, f"g{i}"] for i, (p, t) in
                                enumerate(zip(paths, truth))]}}
    (tmp_path / "split.json").write_text(json.dumps(split))
    found = find_images([], split_file=tmp_path / "split.json")
    assert found.labels == [names[t] for t in truth]
    summary = predict_files(model, _processor(), found.paths, tmp_path / "out", batch_size=3, device="cpu",
                            max_overlays=3, overlay_processes=0, progress=False, labels=found.labels)
    rows = _read_csv(tmp_path / "out" / "predictions.csv")
    assert list(rows[0])[:3] == ["path", "prediction", "label"]
    assert [row["label"] for row in rows] == [names[t] for t in truth]
    # per-class accuracy, computed here from the rows
    for name in names:
        mine = [row for row in rows if row["label"] == name]
        entry = summary["per_class_accuracy"][name]
        assert entry["images"] == len(mine)
        assert entry["correct"] == sum(row["prediction"] == name for row in mine)
        assert entry["accuracy"] == (pytest.approx(entry["correct"] / len(mine)) if mine else None)
    assert summary["num_labelled"] == len(paths)
    assert summary["accuracy"] == pytest.approx(np.mean([row["prediction"] == row["label"] for row in rows]))
    # three overlays, mistakes first, drawn for the rows that name them
    drawn = [row for row in rows if row["overlay"]]
    assert len(drawn) == 3 == summary["overlays"] == len(os.listdir(tmp_path / "out" / "overlays"))
    n_mistakes = sum(row["prediction"] != row["label"] for row in rows)
    assert sum(row["prediction"] != row["label"] for row in drawn) == min(3, n_mistakes)
    for row in drawn:
        assert (tmp_path / "out" / row["overlay"]).read_bytes().startswith(b"\x89PNG")
    # without labels: no label column and no accuracy in the summary
    plain = predict_files(model, _processor(), paths, tmp_path / "plain", device="cpu", max_overlays=0,
                          progress=False)
    assert "label" not in _read_csv(tmp_path / "plain" / "predictions.csv")[0]
    assert "per_class_accuracy" not in plain


def test_overlay_title_names_the_true_class(tmp_path, tiny_teacher):
    from modeling_amlpf.evaluation.prediction import overlay_title

    assert overlay_title("a/b.png") == "a/b.png"
    assert overlay_title("a/b.png", "carcinoma") == "a/b.png\ntrue class: carcinoma"
