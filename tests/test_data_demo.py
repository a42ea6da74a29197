"""The SYNTHETIC demo data: imbalance, groups, determinism, caching, and learnable class differences."""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score, recall_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from modeling_amlpf.data import DEMO_CLASS_NAMES, ensure_demo_data, load_histo_dataset, read_provenance


def tree_digest(folder: str) -> str:
    """One hash over every file's relative path and bytes."""
    digest = hashlib.sha256()
    for path in sorted(Path(folder).rglob("*")):
        if path.is_file():
            digest.update(str(path.relative_to(folder)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def demo_dict(demo_data_dir):
    return load_histo_dataset("demo", demo_data_dir)


def test_demo_is_imbalanced_grouped_and_labelled(demo_dict):
    counts = Counter(label for ds in demo_dict.values() for label in ds["label"])
    assert sorted(counts) == [0, 1, 2, 3] and sum(counts.values()) >= 300
    assert max(counts.values()) >= 3 * min(counts.values())
    assert demo_dict["train"].features["label"].names == DEMO_CLASS_NAMES
    sizes = Counter(group for ds in demo_dict.values() for group in ds["group"])
    assert len(sizes) >= 20 and min(sizes.values()) >= 4
    parts = {part: set(ds["group"]) for part, ds in demo_dict.items()}
    assert not parts["train"] & parts["test"]
    assert not parts["train"] & parts["validation"]
    assert not parts["validation"] & parts["test"]
    image = demo_dict["test"][0]["image"]
    assert image.mode == "RGB" and image.size == (128, 128)


def test_demo_says_it_is_synthetic(demo_dict, demo_data_dir):
    assert demo_dict["train"].info.description.startswith("SYNTHETIC")
    assert "SYNTHETIC" in Path(demo_data_dir, "README.txt").read_text()
    assert read_provenance(demo_dict)["dataset"] == "demo"


def test_generation_is_deterministic_and_repairs_itself(tmp_path, demo_data_dir):
    fresh = ensure_demo_data(str(tmp_path / "copy"))
    assert tree_digest(fresh) == tree_digest(demo_data_dir)
    victim = next(Path(fresh, "carcinoma").iterdir())
    victim.unlink()
    assert ensure_demo_data(fresh) == fresh and victim.is_file()
    assert tree_digest(fresh) == tree_digest(demo_data_dir)


def test_default_demo_folder_is_the_cache(tmp_path, monkeypatch, demo_data_dir):
    monkeypatch.setenv("AMLPF_CACHE", str(tmp_path))
    os.symlink(demo_data_dir, tmp_path / "demo")  # a complete set already there: nothing is regenerated
    dd = load_histo_dataset("demo")
    assert read_provenance(dd)["data_root"] == str(tmp_path / "demo")


def test_foreign_folder_is_never_overwritten(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.txt").write_text("precious")
    with pytest.raises(FileExistsError, match="not an amlpf demo folder"):
        ensure_demo_data(str(tmp_path / "mine"))
    assert (tmp_path / "mine" / "thesis.txt").read_text() == "precious"


def simple_features(image) -> np.ndarray:
    """Colour histograms and crude texture statistics: nothing a pathologist would call morphology."""
    pixels = np.asarray(image, dtype=np.float64)
    gray = pixels.mean(axis=2)
    histograms = [np.histogram(pixels[..., c], bins=8, range=(0, 255))[0] / gray.size for c in range(3)]
    gradient = np.abs(np.diff(gray, axis=0)).mean() + np.abs(np.diff(gray, axis=1)).mean()
    return np.concatenate([*histograms, [gray.std(), gradient, (gray < 110).mean(), (gray > 225).mean()]])


def test_classes_are_learnable_from_simple_features(demo_dict):
    def table(dataset):
        return np.stack([simple_features(row["image"]) for row in dataset]), np.array(dataset["label"])

    train_x, train_y = table(demo_dict["train"])
    test_x, test_y = table(demo_dict["test"])
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, class_weight="balanced"))
    model.fit(train_x, train_y)
    score = balanced_accuracy_score(test_y, model.predict(test_x))
    assert score >= 0.7, score  # chance is 0.25


def crop_views(image, crop=64) -> list:
    """The views the tiny presets see of a 128-pixel tile: its four 64-pixel quadrants and the global view."""
    side = image.size[0]
    quadrants = [image.crop((x, y, x + crop, y + crop)) for y in (0, side - crop) for x in (0, side - crop)]
    return quadrants + [image.resize((crop, crop), Image.BILINEAR)]


def test_every_class_is_recognisable_in_every_crop(demo_dict):
    """The demo's class morphology fills the tile, so each 64-pixel view alone shows its class: a linear model on
    simple colour/texture features of single views recalls every class (chance is 0.25), the minority included."""
    def table(dataset):
        rows = [(simple_features(view), row["label"]) for row in dataset for view in crop_views(row["image"])]
        return np.stack([x for x, _ in rows]), np.array([y for _, y in rows])

    train_x, train_y = table(demo_dict["train"])
    test_x, test_y = table(demo_dict["test"])
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000, class_weight="balanced"))
    model.fit(train_x, train_y)
    recall = recall_score(test_y, model.predict(test_x), average=None, labels=[0, 1, 2, 3])
    assert recall.min() >= 0.8, dict(zip(DEMO_CLASS_NAMES, recall.round(3)))
