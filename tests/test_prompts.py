"""Bundled prompt files, the loader's checks, template prompts and level selection."""

from __future__ import annotations

import json

import pytest

from modeling_amlpf.pretrained.prompts import (
    BUNDLED_PROMPTS_DIR,
    PROMPT_LEVELS,
    PROMPTS_DIR_ENV,
    bundled_prompt_names,
    indefinite_article,
    load_prompt_spec,
    load_prompts,
    select_levels,
    template_prompts,
)

# Canonical class orders, copied from the dataset descriptions (shared/DATASETS.md) and the demo brief.
CANONICAL_CLASSES = {
    "chaoyang": ["normal", "serrated", "adenocarcinoma", "adenoma"],
    "breakhis": [
        "adenosis",
        "fibroadenoma",
        "phyllodes tumor",
        "tubular adenoma",
        "ductal carcinoma",
        "lobular carcinoma",
        "mucinous carcinoma",
        "papillary carcinoma",
    ],
    "breakhis_binary": ["benign", "malignant"],
    "lunghist700": ["adenocarcinoma", "squamous cell carcinoma", "normal"],
    "lunghist700_7class": ["aca_bd", "aca_md", "aca_pd", "nor", "scc_bd", "scc_md", "scc_pd"],
    "demo": ["normal", "hyperplastic", "adenoma", "carcinoma"],
}
MAX_DETAILED_WORDS = 45
MAX_DETAILED_TOKENS = 60  # CLIP BPE tokens, before the start/end tokens; the context holds 77


@pytest.fixture(autouse=True)
def _no_user_prompt_dir(monkeypatch):
    monkeypatch.delenv(PROMPTS_DIR_ENV, raising=False)


def test_bundled_files_are_exactly_the_known_datasets():
    assert bundled_prompt_names() == sorted(CANONICAL_CLASSES)


@pytest.mark.parametrize("name", sorted(CANONICAL_CLASSES))
def test_bundled_file_is_complete_and_in_canonical_order(name):
    spec = load_prompt_spec(name)
    assert spec["path"] == BUNDLED_PROMPTS_DIR / f"{name}.yaml"
    assert spec["class_names"] == CANONICAL_CLASSES[name]
    prompts = spec["prompts"]
    assert tuple(prompts) == PROMPT_LEVELS
    for level, texts in prompts.items():
        assert len(texts) == len(CANONICAL_CLASSES[name])
        assert all(text.strip() for text in texts), level
        assert len(set(texts)) == len(texts), f"{name}/{level}: two classes share a prompt"
    for text in prompts["detailed"]:
        assert len(text.split()) <= MAX_DETAILED_WORDS, text
        assert len(text.split()) >= 12, f"detailed prompt too short to describe morphology: {text}"
    assert load_prompts(name) == prompts


@pytest.mark.parametrize("name", sorted(CANONICAL_CLASSES))
def test_detailed_prompts_fit_the_clip_context(name):
    tokenizer_module = pytest.importorskip("open_clip.tokenizer")
    tokenizer = tokenizer_module.SimpleTokenizer()  # bundled BPE vocabulary, no download
    for text in load_prompts(name)["detailed"]:
        assert len(tokenizer.encode(text)) <= MAX_DETAILED_TOKENS, text


def test_demo_prompts_say_synthetic_and_match_the_generator():
    from modeling_amlpf.data.demo import DEMO_CLASS_NAMES

    assert load_prompt_spec("demo")["class_names"] == DEMO_CLASS_NAMES
    assert all("Synthetic" in text for text in load_prompts("demo")["detailed"])
    assert "SYNTHETIC" in (BUNDLED_PROMPTS_DIR / "demo.yaml").read_text()


def test_class_names_reorder_the_lists():
    file_order = load_prompts("lunghist700")
    wanted = ["normal", "adenocarcinoma", "squamous cell carcinoma"]
    reordered = load_prompts("lunghist700", class_names=wanted)
    for level in PROMPT_LEVELS:
        assert reordered[level] == [file_order[level][2], file_order[level][0], file_order[level][1]]
    assert "alveoli" in reordered["detailed"][0]


def test_class_mismatch_names_missing_and_extra_classes_and_the_file():
    with pytest.raises(ValueError) as info:
        load_prompts("chaoyang", class_names=["normal", "serrated", "adenocarcinoma", "hyperplastic"])
    message = str(info.value)
    assert "no prompts for ['hyperplastic']" in message  # a dataset class the file does not cover
    assert "prompts for classes that are not expected: ['adenoma']" in message  # in the file only
    assert "chaoyang.yaml" in message


def test_a_prompt_file_missing_a_class_names_that_class(tmp_path):
    """The issue's case: the dataset has 'tumor', the file does not; the message must not be reversed."""
    path = _write_yaml(tmp_path / "p.yaml", ["stroma"], {"stroma": _entry("stroma")})
    with pytest.raises(ValueError) as info:
        load_prompts(path, class_names=["tumor", "stroma"])
    assert "no prompts for ['tumor']" in str(info.value)
    assert "not expected" not in str(info.value)


def test_yaml_syntax_error_names_the_file(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("class_names: [a, b\nprompts: {")
    with pytest.raises(ValueError, match=r"broken\.yaml is not valid YAML"):
        load_prompts(path)


def test_class_names_match_after_unicode_normalisation(tmp_path):
    import unicodedata

    composed = unicodedata.normalize("NFC", "adénome")
    decomposed = unicodedata.normalize("NFD", "adénome")
    assert composed != decomposed
    path = _write_yaml(tmp_path / "p.yaml", [decomposed, "腺癌"], {decomposed: _entry("a"), "腺癌": _entry("b")})
    prompts = load_prompts(path, class_names=["腺癌", composed])
    assert prompts["detailed"] == ["Detailed b morphology.", "Detailed a morphology."]


def _write_yaml(path, class_names, prompts):
    import yaml

    path.write_text(yaml.safe_dump({"dataset": "mine", "task": "t", "class_names": class_names, "prompts": prompts}))
    return path


def _entry(name):
    return {"label": name, "basic": f"The tissue sample is {name}.", "detailed": f"Detailed {name} morphology."}


def test_file_prompts_must_cover_every_class(tmp_path):
    path = _write_yaml(tmp_path / "p.yaml", ["tumor", "stroma"], {"tumor": _entry("tumor"), "fat": _entry("fat")})
    expected = r"no prompts for \['stroma'\]; prompts for classes that are not expected: \['fat'\]"
    with pytest.raises(ValueError, match=expected):
        load_prompts(path)


def test_file_prompts_need_all_three_levels(tmp_path):
    entry = _entry("stroma")
    del entry["detailed"]
    path = _write_yaml(tmp_path / "p.yaml", ["tumor", "stroma"], {"tumor": _entry("tumor"), "stroma": entry})
    with pytest.raises(ValueError, match="class 'stroma' must have exactly the levels"):
        load_prompts(path)


def test_empty_prompt_is_rejected(tmp_path):
    entry = {**_entry("stroma"), "basic": "  "}
    path = _write_yaml(tmp_path / "p.yaml", ["tumor", "stroma"], {"tumor": _entry("tumor"), "stroma": entry})
    with pytest.raises(ValueError, match="'stroma', level 'basic'"):
        load_prompts(path)


def test_json_file_and_prompt_dir_lookup(tmp_path, monkeypatch):
    data = {"dataset": "mine", "task": "t", "class_names": ["b", "a"], "prompts": {"a": _entry("a"), "b": _entry("b")}}
    (tmp_path / "mine.json").write_text(json.dumps(data))
    assert load_prompts(tmp_path / "mine.json")["label"] == ["b", "a"]
    monkeypatch.setenv(PROMPTS_DIR_ENV, str(tmp_path))
    assert load_prompts("mine", class_names=["a", "b"])["label"] == ["a", "b"]
    assert "mine" in bundled_prompt_names()


def test_unknown_name_lists_the_available_ones():
    with pytest.raises(FileNotFoundError) as info:
        load_prompts("no_such_dataset")
    assert "chaoyang" in str(info.value) and PROMPTS_DIR_ENV in str(info.value)


def test_template_prompts_use_the_right_article():
    prompts = template_prompts(["adenoma", "normal", "squamous_cell-carcinoma", "uterine_tissue", "SCC"])
    assert prompts["label"] == ["adenoma", "normal", "squamous cell carcinoma", "uterine tissue", "SCC"]
    assert prompts["basic"][:3] == [
        "The tissue sample is an adenoma.",
        "The tissue sample is a normal.",
        "The tissue sample is a squamous cell carcinoma.",
    ]
    assert prompts["basic"][3] == "The tissue sample is a uterine tissue."
    assert prompts["basic"][4] == "The tissue sample is an SCC."
    assert prompts["detailed"][0] == "A histopathology image of adenoma tissue, stained with hematoxylin and eosin."
    assert prompts["detailed"][3] == "A histopathology image of uterine tissue, stained with hematoxylin and eosin."
    assert len(set(prompts["detailed"])) == 5


@pytest.mark.parametrize(
    "word, article",
    [("ulcer", "an"), ("undifferentiated", "an"), ("urothelial", "a"), ("hyperplasia", "a"), ("ependymoma", "an")],
)
def test_indefinite_article(word, article):
    assert indefinite_article(word) == article


def test_select_levels_validates_and_keeps_canonical_order():
    prompts = load_prompts("chaoyang")
    chosen = select_levels(prompts, "detailed,label")
    assert list(chosen) == ["label", "detailed"]
    assert chosen["detailed"] == prompts["detailed"]
    assert list(select_levels(prompts, ["basic"])) == ["basic"]
    assert select_levels(prompts, None) == prompts and select_levels(prompts, "all") == prompts
    with pytest.raises(ValueError, match=r"unknown prompt level\(s\) \['detail'\]"):
        select_levels(prompts, "label,detail")
    with pytest.raises(ValueError, match="no prompt level"):
        select_levels(prompts, " , ")
    with pytest.raises(ValueError, match="repeated"):
        select_levels(prompts, ["label", "label"])
    with pytest.raises(ValueError, match="have no level"):
        select_levels({"label": ["x"]}, "basic")


def test_truncation_warning_names_the_class_once_not_the_prompt(tiny_student, caplog):
    import logging

    model, tokenizer = tiny_student
    names = [model.config.id2label[i] for i in range(model.config.num_labels)]
    long_prompt = "eosinophilic " * 120
    prompts = template_prompts(names)
    prompts["detailed"][0] = long_prompt
    with caplog.at_level(logging.WARNING):
        model.set_prompts(prompts, tokenizer, class_names=names)
    messages = [r.getMessage() for r in caplog.records if "truncated" in r.getMessage()]
    assert len(messages) == 1
    assert f"['{names[0]}']" in messages[0] and "eosinophilic eosinophilic" not in messages[0]
