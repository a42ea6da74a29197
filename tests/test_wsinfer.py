"""WSInfer / QuPath export (`python -m modeling_amlpf.export wsinfer`) and slide heatmaps (`report slides`).

The exported TorchScript module must compute the processor's evaluation views itself from WSInfer's normalised
tile: checked here piece by piece (Pillow's resize, the views, the traced module on several batch sizes), and
end to end with the real `wsinfer run` (installed once into .cache/wsinfer-venv, see wsinfer_env.py) on a
pyramidal TIFF, against AutoModel + the checkpoint's processor on the same regions read with the same reader.
"""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO_ROOT, STUDENT_TINY, TEACHER_TINY
from hub_fakes import FakeHub
from PIL import Image
from transformers import AutoConfig, AutoModel, AutoTokenizer

from modeling_amlpf.export import main as export_main
from modeling_amlpf.models.image_processing_amlpf import TINY_PRESET, AmlpfImageProcessor
from modeling_amlpf.slides.spacing import DOCUMENTED_SPACINGS, resolve_patch_size, resolve_spacing
from modeling_amlpf.slides.tile_views import TileViews, _pil_pass, pil_resize_weights
from modeling_amlpf.slides.wsinfer_export import (
    WSINFER_FILES,
    normalised_tiles,
    reference_probabilities,
    scripted_probabilities,
    synthetic_tiles,
    trace_module,
)
from modeling_amlpf.utils import UserError

TILE = 96  # the tiny presets crop 64 px and upsize below 128 px: a 96-px tile exercises the upsizing
SPACING = 0.5
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


# ------------------------------------------------------------------------------------------------ pieces
@pytest.mark.parametrize("size_in,size_out", [(64, 128), (96, 128), (100, 128), (37, 200), (224, 512), (128, 96)])
def test_pil_weights_reproduce_pillow_bilinear_bit_for_bit(size_in, size_out):
    image = np.random.default_rng(size_in).integers(0, 256, (size_in, size_in + 3, 3), dtype=np.uint8)
    expected = np.asarray(Image.fromarray(image).resize((size_out, size_out), Image.Resampling.BILINEAR))
    pixels = torch.from_numpy(image).permute(2, 0, 1)[None].double()
    wide = _pil_pass(pixels, pil_resize_weights(size_in + 3, size_out), dim=-1)
    ours = _pil_pass(wide, pil_resize_weights(size_in, size_out), dim=-2)[0].permute(1, 2, 0).numpy()
    assert np.array_equal(ours.astype(np.uint8), expected)


@pytest.mark.parametrize("settings,tile", [
    (TINY_PRESET, 96),  # upsized to 128 (Pillow bilinear), small-stride grid
    (TINY_PRESET, 64),  # the smallest tile: upsized twice over
    (TINY_PRESET, 300),  # no upsizing, large-stride grid (side >= large_side_threshold)
    ({**TINY_PRESET, "resample": "bicubic", "antialias": True}, 96),  # torch's uint8 bicubic + antialiased view
    ({**TINY_PRESET, "num_crops": 3, "image_mean": [0.5] * 3, "image_std": [0.25] * 3}, 112),
    ({}, 224),  # the paper's views: 224-px tile upsized to 512
])
def test_tile_views_equal_the_processor_evaluation_views(settings, tile):
    processor = AmlpfImageProcessor(**settings)
    pixels = synthetic_tiles(3, tile, seed=tile)
    expected = processor(list(pixels))["pixel_values"]
    views = TileViews(processor, tile, processor.image_mean, processor.image_std)
    tiles = normalised_tiles(pixels, processor.image_mean, processor.image_std)
    recovered = views.pixels(tiles)
    assert torch.equal(recovered, torch.from_numpy(pixels).permute(0, 3, 1, 2).float())  # exact 8-bit recovery
    ours = views(tiles)
    assert ours.shape == expected.shape == (3, processor.num_views, 3, processor.crop_size, processor.crop_size)
    assert (ours - expected).abs().max().item() <= 1e-5


def test_tile_views_refuse_tiles_smaller_than_a_crop():
    with pytest.raises(ValueError, match="cannot hold"):
        TileViews(AmlpfImageProcessor(**TINY_PRESET), 48, MEAN, STD)


# ------------------------------------------------------------------------------------------------ checkpoints
def tissue_tiles(count: int, seed: int, size: int = TILE) -> np.ndarray:
    """(count, size, size, 3) uint8 tiles cut from the tissue of a slide like the one WSInfer reads below."""
    from wsinfer_helper import tissue_slide

    slide = tissue_slide(768, 640, seed=seed)
    rng = np.random.default_rng(seed)
    tops, lefts = rng.integers(200, 640 - 200 - size, count), rng.integers(220, 768 - 220 - size, count)
    return np.stack([slide[top : top + size, left : left + size] for top, left in zip(tops, lefts)])


def _sharpen(model, processor):
    """Random-init tiny models give every tile almost the same logits. Fit the last layer (teacher: the head's
    last Linear; student: the prompt embeddings and the logit scale) to the principal directions of the features
    of a few tissue-like tiles, so that the logits spread over several units across tiles: a 'trained-ish' model
    whose probabilities a wrong tile, view or interpolation visibly changes."""
    inputs = processor(list(tissue_tiles(24, seed=100)))
    classes = model.config.num_labels
    with torch.no_grad():
        if hasattr(model, "head"):
            captured = []
            hook = model.head[-1].register_forward_hook(lambda module, args, out: captured.append(args[0]))
            model(**inputs)
            hook.remove()
            features = captured[0]
        else:
            features = model.get_image_features(**inputs).pooler_output.flatten(0, 1)
            features = torch.nn.functional.normalize(features, dim=-1)
        mean = features.mean(0)
        _, spread, directions = torch.linalg.svd(features - mean, full_matrices=False)
        spread = spread[:classes, None] / math.sqrt(len(features))
        if hasattr(model, "head"):
            weight = 3.0 * directions[:classes] / spread
            model.head[-1].weight.copy_(weight)
            model.head[-1].bias.copy_(-weight @ mean)
        else:
            # prompts orthogonal to the mean embedding: no constant per-class offset, only the tiles' differences
            unit = mean / mean.norm()
            prompts = directions[:classes] - (directions[:classes] @ unit)[:, None] * unit
            prompts = torch.nn.functional.normalize(prompts, dim=-1)
            model.prompt_embeds.copy_(prompts.expand_as(model.prompt_embeds))
            levels = model.prompt_embeds.shape[0]
            model.logit_scale.fill_(math.log(3.0 / (levels * spread[0].item())))
    return model


def _square_images(folder: Path, count: int, size: tuple[int, int]) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for index in range(count):
        Image.fromarray(synthetic_tiles(1, 8, seed=index)[0]).resize(size).save(folder / f"img{index}.png")
        names.append(f"img{index}.png")
    return names


def _write_split(model_dir: Path, data_root: Path, names: list[str], dataset: str = "imagefolder", **options):
    parts = {"train": [[name, 0, name] for name in names], "validation": [], "test": []}
    (model_dir / "split.json").write_text(json.dumps(
        {"dataset": dataset, "options": options, "data_root": str(data_root), "parts": parts}
    ))


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A sharpened tiny teacher and student saved with their processors, each with a split.json whose training
    images are 96-px squares (so the export's default tile size is 96)."""
    root = tmp_path_factory.mktemp("wsinfer-checkpoints")
    names = _square_images(root / "data", 3, (TILE, TILE))
    saved = {}
    for kind, preset in (("teacher", TEACHER_TINY), ("student", STUDENT_TINY)):
        torch.manual_seed(0)
        processor = AmlpfImageProcessor.from_pretrained(preset)
        model = _sharpen(AutoModel.from_config(AutoConfig.from_pretrained(preset)).eval(), processor)
        folder = root / kind
        model.save_pretrained(folder)
        processor.save_pretrained(folder)
        if kind == "student":
            AutoTokenizer.from_pretrained(preset).save_pretrained(folder)
        _write_split(folder, root / "data", names)
        saved[kind] = folder
    return saved


@pytest.fixture(scope="module")
def exports(checkpoints, tmp_path_factory):
    """Both checkpoints exported exactly as the docs say (the tile size from split.json, the spacing given)."""
    root = tmp_path_factory.mktemp("wsinfer-exports")
    done = {}
    for kind, folder in checkpoints.items():
        out = root / kind
        assert export_main(["wsinfer", "--model", str(folder), "--output_dir", str(out),
                            "--spacing_um_px", str(SPACING)]) == 0
        done[kind] = out
    return done


def _load(folder):
    model = AutoModel.from_pretrained(folder).eval()
    return model, AmlpfImageProcessor.from_pretrained(folder)


@pytest.mark.parametrize("kind", ["teacher", "student"])
def test_export_writes_the_wsinfer_layout(kind, checkpoints, exports):
    out = exports[kind]
    assert sorted(p.name for p in out.iterdir()) == sorted(WSINFER_FILES)
    config = json.loads((out / "config.json").read_text())
    model, processor = _load(checkpoints[kind])
    assert config["spec_version"] == "1.0"
    assert config["num_classes"] == model.config.num_labels
    assert config["class_names"] == [model.config.id2label[i] for i in range(model.config.num_labels)]
    assert config["patch_size_pixels"] == TILE and config["spacing_um_px"] == SPACING
    assert [step["name"] for step in config["transform"]] == ["Resize", "ToTensor", "Normalize"]
    assert config["transform"][0]["arguments"] == {"size": TILE}
    assert config["transform"][2]["arguments"] == {"mean": processor.image_mean, "std": processor.image_std}
    card = (out / "README.md").read_text()
    assert "wsinfer run -i" in card and '"hf_repo_id"' in card and "training images listed by" in card


@pytest.mark.parametrize("kind", ["teacher", "student"])
def test_traced_module_equals_automodel_with_its_processor(kind, checkpoints, exports):
    """The saved TorchScript file on any batch size (traced with 2) against AutoModel + processor; a processor with
    other views gives visibly different probabilities, so the comparison has the power to fail."""
    module = torch.jit.load(str(exports[kind] / "torchscript_model.pt"))
    model, processor = _load(checkpoints[kind])
    for batch in (1, 3):
        pixels = tissue_tiles(batch, seed=10 + batch)
        ours = scripted_probabilities(module, pixels, processor.image_mean, processor.image_std)
        reference = reference_probabilities(model, processor, pixels)
        assert ours.shape == (batch, model.config.num_labels)
        assert np.abs(ours - reference).max() <= 1e-5
    pixels = tissue_tiles(8, seed=3)
    reference = reference_probabilities(model, processor, pixels)
    assert reference.std(axis=0).max() > 0.02  # tiles are told apart: the model is not constant
    other_views = reference_probabilities(model, processor.with_overrides(resample="bicubic", antialias=True), pixels)
    assert np.abs(other_views - reference).max() > 1e-3


def test_clip_tower_student_traces_too():
    """Students with a transformers CLIP image tower (vision_backend="clip") export as well as timm ones."""
    from modeling_amlpf import AmlpfClipConfig, AmlpfClipForImageClassification

    config, _ = AmlpfClipConfig.get_config_dict(STUDENT_TINY)
    vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
              "image_size": 32, "patch_size": 8, "projection_dim": config["projection_dim"],
              "hidden_act": "quick_gelu"}
    torch.manual_seed(0)
    model = AmlpfClipForImageClassification(
        AmlpfClipConfig.from_dict({**config, "vision_backend": "clip", "vision_config": vision})
    ).eval()
    processor = AmlpfImageProcessor(min_short_side=64, crop_size=32, crop_stride=8, large_crop_stride=12)
    traced, mean, std = trace_module(model, processor, 48)
    for batch in (1, 3):
        pixels = synthetic_tiles(batch, 48, seed=batch)
        ours = scripted_probabilities(traced, pixels, mean, std)
        assert np.abs(ours - reference_probabilities(model, processor, pixels)).max() <= 1e-5


# ------------------------------------------------------------------------------------------------ options
def test_spacing_is_given_or_documented_never_guessed():
    assert resolve_spacing(0.25, None) == (0.25, "given with --spacing_um_px")
    spacing, source = resolve_spacing(None, {"dataset": "breakhis", "options": {"magnification": "40X"}})
    assert spacing == DOCUMENTED_SPACINGS[("breakhis", "40X")].spacing_um_px == 0.25 and "eva" in source
    for info, named in (({"dataset": "chaoyang", "options": {}}, "chaoyang"),
                        ({"dataset": "breakhis", "options": {"magnification": "200X"}}, "magnification 200X"),
                        ({"dataset": "imagefolder", "options": {}}, "imagefolder"), (None, "no split.json")):
        with pytest.raises(UserError, match="--spacing_um_px") as error:
            resolve_spacing(None, info)
        assert named in str(error.value)
    with pytest.raises(UserError, match="positive"):
        resolve_spacing(0.0, None)


def test_patch_size_defaults_to_the_square_training_images(tmp_path):
    names = _square_images(tmp_path / "square", 2, (80, 80))
    info = {"data_root": str(tmp_path / "square"), "parts": {"train": [[n, 0, n] for n in names]}}
    assert resolve_patch_size(None, info)[0] == 80
    assert resolve_patch_size(120, info) == (120, "given with --patch_size_pixels")
    names = _square_images(tmp_path / "wide", 2, (70, 46))
    wide = {"data_root": str(tmp_path / "wide"), "parts": {"train": [[n, 0, n] for n in names]}}
    with pytest.raises(UserError, match=r"not squares of one size \(found 70x46 \(2\)\).*--patch_size_pixels"):
        resolve_patch_size(None, wide)
    with pytest.raises(UserError, match="no split.json.*--patch_size_pixels"):
        resolve_patch_size(None, None)
    moved = {"data_root": str(tmp_path / "gone"), "parts": {"train": [["a.png", 0, "a"]]}}
    with pytest.raises(UserError, match="cannot read the training images"):
        resolve_patch_size(None, moved)


def test_cli_refuses_unknown_spacing_before_loading_the_model(tmp_path):
    """Run as documented, on a folder that is no checkpoint at all: the spacing is refused first (exit code 2)."""
    folder = tmp_path / "not-a-checkpoint"
    folder.mkdir()
    (folder / "split.json").write_text(json.dumps({"dataset": "chaoyang", "options": {}, "parts": {}}))
    result = subprocess.run(
        [sys.executable, "-m", "modeling_amlpf.export", "wsinfer", "--model", str(folder), "--output_dir",
         str(tmp_path / "out")], cwd=REPO_ROOT, capture_output=True, text=True,
    )
    assert result.returncode == 2
    assert "spacing of chaoyang is not documented" in result.stderr and "--spacing_um_px" in result.stderr
    assert not (tmp_path / "out").exists()


def test_cli_refuses_tiles_smaller_than_the_crops(checkpoints, tmp_path, capsys):
    code = export_main(["wsinfer", "--model", str(checkpoints["teacher"]), "--output_dir", str(tmp_path / "o"),
                        "--spacing_um_px", "0.5", "--patch_size_pixels", "32"])
    assert code == 2 and "pass at least 64" in capsys.readouterr().err


def test_push_to_hub_uploads_the_wsinfer_layout(checkpoints, tmp_path, monkeypatch):
    from modeling_amlpf.slides import wsinfer_export

    hub = FakeHub(tmp_path / "hub")
    monkeypatch.setattr(wsinfer_export, "HfApi", lambda **kwargs: hub)
    out = tmp_path / "export"
    (out).mkdir()
    (out / "notes.txt").write_text("not part of the WSInfer layout")
    assert export_main(["wsinfer", "--model", str(checkpoints["student"]), "--output_dir", str(out),
                        "--spacing_um_px", "0.5", "--push_to_hub", "--hub_model_id", "someone/amlpf-wsinfer"]) == 0
    repo = tmp_path / "hub" / "someone" / "amlpf-wsinfer"
    assert hub.uploads == ["someone/amlpf-wsinfer"]
    assert sorted(p.name for p in repo.iterdir()) == sorted(WSINFER_FILES)
    card = (repo / "README.md").read_text()
    entry = json.loads(card.split("```json\n")[1].split("```")[0])
    assert entry["models"]["amlpf-wsinfer"]["hf_repo_id"] == "someone/amlpf-wsinfer"
    for name in ("config.json", "torchscript_model.pt"):
        assert (repo / name).read_bytes() == (out / name).read_bytes()


# ------------------------------------------------------------------------------------------------ real WSInfer
@pytest.fixture(scope="module")
def wsinfer_venv():
    from wsinfer_env import ensure_wsinfer_venv

    return ensure_wsinfer_venv()


@pytest.fixture(scope="module")
def slide_dir(wsinfer_venv, tmp_path_factory):
    """One pyramidal tiled TIFF at 0.5 um/px (resolution tags), tissue on white glass."""
    from wsinfer_env import run_helper

    folder = tmp_path_factory.mktemp("slides")
    run_helper(wsinfer_venv, "write-slide", folder / "tissue.tif", "--mpp", str(SPACING), "--width", "1152",
               "--height", "896")
    return folder


def _csv_probabilities(path: Path) -> tuple[list[str], np.ndarray]:
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    columns = [name for name in rows[0] if name.startswith("prob_")]
    return [name[5:] for name in columns], np.array([[float(row[c]) for c in columns] for row in rows])


@pytest.mark.parametrize("kind", ["teacher", "student"])
def test_wsinfer_run_matches_the_checkpoint_on_the_same_regions(kind, wsinfer_venv, slide_dir, checkpoints, exports,
                                                                tmp_path):
    from wsinfer_env import run_helper, run_wsinfer, validate_config

    out = exports[kind]
    assert validate_config(wsinfer_venv, out / "config.json").returncode == 0
    broken = json.loads((out / "config.json").read_text())
    broken["transform"][0]["name"] = "CenterCrop"
    (tmp_path / "broken.json").write_text(json.dumps(broken))
    assert validate_config(wsinfer_venv, tmp_path / "broken.json").returncode != 0  # the validator is live

    results = tmp_path / "results"
    run = run_wsinfer(wsinfer_venv, slide_dir, results, out, tmp_path / "home")
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    table = results / "model-outputs-csv" / "tissue.csv"
    classes, wsinfer_probs = _csv_probabilities(table)
    model, processor = _load(checkpoints[kind])
    assert classes == [model.config.id2label[i] for i in range(model.config.num_labels)]
    assert len(wsinfer_probs) >= 20  # the tissue blob holds a few dozen 96-px tiles
    assert (results / "model-outputs-geojson" / "tissue.geojson").is_file()

    run_helper(wsinfer_venv, "read-regions", slide_dir / "tissue.tif", table, tmp_path / "tiles.npy")
    tiles = np.load(tmp_path / "tiles.npy")
    assert tiles.shape == (len(wsinfer_probs), TILE, TILE, 3)
    ours = reference_probabilities(model, processor, tiles)
    assert wsinfer_probs.std(axis=0).max() > 0.02  # tiles differ, so a wrong tile or view would show
    difference = np.abs(wsinfer_probs - ours).max()
    print(f"{kind}: {len(tiles)} tiles, max |wsinfer run - AutoModel+processor| probability = {difference:.3g}")
    assert difference <= 1e-4
    assert np.array_equal(wsinfer_probs.argmax(1), ours.argmax(1))

    heatmaps = subprocess.run([sys.executable, "-m", "modeling_amlpf.report", "slides", str(results)],
                              cwd=REPO_ROOT, capture_output=True, text=True)
    assert heatmaps.returncode == 0, heatmaps.stderr[-3000:]
    picture = results / "heatmaps" / "tissue.png"
    with Image.open(picture) as image:
        assert image.width > 600 and image.height > 300


def test_wsinfer_resizes_tiles_of_a_finer_slide_to_the_model_spacing(wsinfer_venv, checkpoints, exports, tmp_path):
    """A slide scanned at 0.25 um/px: WSInfer cuts 192-px regions (the model's 48 um) and its Resize brings them to
    96 px; the checkpoint on the same regions resized the same way (torchvision's Resize on the PIL tile) agrees."""
    from torchvision.transforms import Resize
    from wsinfer_env import run_helper, run_wsinfer

    slides = tmp_path / "slides"
    slides.mkdir()
    run_helper(wsinfer_venv, "write-slide", slides / "fine.tif", "--mpp", "0.25", "--width", "2304", "--height",
               "1792")
    results = tmp_path / "results"
    run = run_wsinfer(wsinfer_venv, slides, results, exports["teacher"], tmp_path / "home")
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    table = results / "model-outputs-csv" / "fine.csv"
    _, wsinfer_probs = _csv_probabilities(table)
    run_helper(wsinfer_venv, "read-regions", slides / "fine.tif", table, tmp_path / "tiles.npy")
    regions = np.load(tmp_path / "tiles.npy")
    assert regions.shape[1:] == (2 * TILE, 2 * TILE, 3)
    resized = np.stack([np.asarray(Resize(TILE)(Image.fromarray(region))) for region in regions])
    model, processor = _load(checkpoints["teacher"])
    assert np.abs(wsinfer_probs - reference_probabilities(model, processor, resized)).max() <= 1e-4


# ------------------------------------------------------------------------------------------------ heatmap alone
def test_report_slides_without_the_slide_names_the_flag(tmp_path):
    results = tmp_path / "results"
    (results / "model-outputs-csv").mkdir(parents=True)
    (results / "masks").mkdir()
    (results / "model-outputs-csv" / "s1.csv").write_text(
        "minx,miny,width,height,prob_a,prob_b\n0,0,64,64,0.9,0.1\n64,0,64,64,0.2,0.8\n"
    )
    Image.new("RGB", (64, 32), "white").save(results / "masks" / "s1.jpg")
    result = subprocess.run([sys.executable, "-m", "modeling_amlpf.report", "slides", str(results)], cwd=REPO_ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 2 and "--slides" in result.stderr
    slides = tmp_path / "slides"
    slides.mkdir()
    Image.new("RGB", (256, 128), "white").save(slides / "s1.tif")
    result = subprocess.run([sys.executable, "-m", "modeling_amlpf.report", "slides", str(results), "--slides",
                             str(slides)], cwd=REPO_ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert (results / "heatmaps" / "s1.png").is_file()
