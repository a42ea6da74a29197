"""Tiny, randomly initialised presets of both models for tests and the demo, built offline.

``python -m modeling_amlpf.presets [--output_dir configs/models]`` writes ``teacher-tiny/`` and
``student-tiny/`` (config.json, preprocessor_config.json; the student also its tokenizer files). The tiny
tokenizer is a CLIP-style byte-level BPE trained here on the bundled prompt files, so nothing is downloaded.
The presets keep the paper's 9 views and architectures (ViT with LayerScale; a small ``resnet*_clip``
trunk with attention pooling; a causal CLIP text tower) at sizes that build in milliseconds.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml
from tokenizers import pre_tokenizers, trainers
from transformers import CLIPTokenizer

from ..data import DEMO_CLASS_NAMES
from ..models.configuration_amlpf import AmlpfClipConfig, AmlpfTeacherConfig
from ..models.image_processing_amlpf import AmlpfImageProcessor
from ..models.modeling_amlpf import AmlpfClipForImageClassification
from .prompts import load_prompts

REPO_ROOT = Path(__file__).resolve().parents[2]
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
TINY_VOCAB_SIZE = 1024
TINY_CONTEXT = 77

TINY_PROCESSOR = dict(min_short_side=128, crop_size=64, crop_stride=8, large_crop_stride=12, large_side_threshold=256)
TINY_TEACHER = dict(
    backbone="vit_large_patch16_224",
    backbone_kwargs=dict(
        img_size=64, patch_size=8, init_values=1e-5, dynamic_img_size=True, embed_dim=64, depth=3, num_heads=4
    ),
    head_hidden_sizes=[64, 32],
)
TINY_STUDENT_VISION = dict(
    timm_model_name="resnet50_clip",
    timm_model_kwargs=dict(
        img_size=64,
        stem_chs=[8, 8, 16],
        blocks=[dict(type="bottle", d=1, c=c, s=s, br=0.25) for c, s in ((32, 1), (64, 2), (128, 2), (256, 2))],
    ),
    projection_dim=64,
)
TINY_TEXT = dict(
    hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
    max_position_embeddings=TINY_CONTEXT, projection_dim=64, hidden_act="quick_gelu",
)

# A fixed corpus beside the prompt files, so that the tokenizer covers ordinary pathology wording.
_BASE_CORPUS = """
a histopathology image of tissue stained with hematoxylin and eosin. the tissue sample is a normal tissue.
glands, nuclei, cytoplasm, stroma, mucin, epithelium, lumen, crypts, cells, mitoses, necrosis, fibrosis.
benign malignant carcinoma adenocarcinoma adenoma squamous cell carcinoma serrated hyperplastic normal.
well moderately poorly differentiated tubular papillary mucinous lobular ductal phyllodes fibroadenoma adenosis.
enlarged hyperchromatic pleomorphic elongated crowded stratified round oval regular irregular dense sparse.
"""


def _prompt_corpus() -> list[str]:
    texts = [_BASE_CORPUS]
    for path in sorted((REPO_ROOT / "configs" / "prompts").glob("*.yaml")):
        data = yaml.safe_load(path.read_text())
        texts.append(yaml.safe_dump(data.get("prompts", data)))
    return texts


def build_tiny_tokenizer(corpus: list[str] | None = None, vocab_size: int = TINY_VOCAB_SIZE) -> CLIPTokenizer:
    """A CLIP tokenizer (same normaliser, pre-tokeniser and ``</w>`` word ends as OpenAI's) with a small
    BPE vocabulary trained on ``corpus`` (the BPE trainer breaks frequency ties arbitrarily, so the
    committed preset files, not a rebuild, are the reference)."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    seed_vocab = {c: i for i, c in enumerate(alphabet)}
    seed_vocab.update({c + "</w>": len(alphabet) + i for i, c in enumerate(alphabet)})
    tokenizer = CLIPTokenizer(vocab=seed_vocab, merges=[])
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[],
        initial_alphabet=alphabet,
        end_of_word_suffix="</w>",
        show_progress=False,
    )
    backend = tokenizer.backend_tokenizer
    backend.train_from_iterator(corpus or _prompt_corpus(), trainer=trainer)
    trained = json.loads(backend.to_str())["model"]
    vocab = dict(seed_vocab)
    for token in sorted(trained["vocab"], key=trained["vocab"].get):
        vocab.setdefault(token, len(vocab))
    vocab[BOS] = len(vocab)
    vocab[EOS] = len(vocab)  # highest id, as in OpenAI's vocabulary
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in trained["merges"]]
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=TINY_CONTEXT)


def tiny_teacher_config(class_names: list[str]) -> AmlpfTeacherConfig:
    return AmlpfTeacherConfig(**TINY_TEACHER, class_names=list(class_names))


def tiny_student_config(tokenizer: CLIPTokenizer, class_names: list[str]) -> AmlpfClipConfig:
    text = dict(TINY_TEXT, vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return AmlpfClipConfig(**TINY_STUDENT_VISION, text_config=text, class_names=list(class_names))


def write_tiny_presets(output_dir: str | Path) -> tuple[Path, Path]:
    """Write ``teacher-tiny`` and ``student-tiny`` for the (synthetic) demo classes and their prompts."""
    output_dir = Path(output_dir)
    demo = load_prompts("demo")
    class_names = demo_class_names()
    processor = AmlpfImageProcessor(**TINY_PROCESSOR)

    teacher_dir = output_dir / "teacher-tiny"
    tiny_teacher_config(class_names).save_pretrained(teacher_dir)
    processor.save_pretrained(teacher_dir)

    student_dir = output_dir / "student-tiny"
    tokenizer = build_tiny_tokenizer()
    student = AmlpfClipForImageClassification(tiny_student_config(tokenizer, class_names))
    student.set_prompts(demo, tokenizer, class_names=class_names)
    student.config.save_pretrained(student_dir)
    processor.save_pretrained(student_dir)
    tokenizer.save_pretrained(student_dir)
    for folder in (teacher_dir, student_dir):
        _strip_remote_code(folder)
    return teacher_dir, student_dir


def _strip_remote_code(folder: Path) -> None:
    """Presets are read with the package installed: keep them free of copied code and ``auto_map``."""
    for code in folder.glob("*.py"):
        code.unlink()
    for name in ("config.json", "preprocessor_config.json"):
        path = folder / name
        data = json.loads(path.read_text())
        if data.pop("auto_map", None) is not None:
            path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def demo_class_names() -> list[str]:
    return list(DEMO_CLASS_NAMES)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output_dir", default=str(REPO_ROOT / "configs" / "models"))
    args = parser.parse_args(argv)
    for path in write_tiny_presets(args.output_dir):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
