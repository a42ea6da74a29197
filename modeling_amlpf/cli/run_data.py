"""The data side of one run: its split (loaded, checked, exported as ``split.json``), its image processor, and the
checks against the split a model was trained with (the teacher's, or the evaluated checkpoint's). Shared by
``train_teacher.py`` and ``distill_student.py``.
"""

from __future__ import annotations

from pathlib import Path

from transformers import AutoConfig
from transformers.utils import logging

from ..data import compare_with_training_split, export_split, load_histo_dataset, read_provenance
from ..data.cohort import map_class_names, parse_class_map, relabel_to_model_classes
from ..data.loader import EXTERNAL_COHORT_HINT
from ..data.split_files import LEAK, OTHER_DATA
from ..models.image_processing_amlpf import AmlpfImageProcessor
from ..pretrained.weights import is_local_path
from .arguments import DataArguments
from .launch import UserError

logger = logging.get_logger(__name__)

SPLIT_FILE = "split.json"
PREPROCESSOR_FILE = "preprocessor_config.json"


class RunDataError(UserError, ValueError):
    """The data of a run does not fit what was asked (split, model classes, the evaluated model's training data);
    the message names the fix. The scripts print it without a traceback (exit code 2)."""


def load_split(data_args: DataArguments, split_seed: int, *, training: bool = True):
    """The dataset's ``DatasetDict`` (train/validation/test): split ``split_seed`` (group-disjoint unless the
    dataset prescribes a split), the given split files, or with ``--external_cohort`` every image in ``test``.

    Training needs non-empty train and validation parts; an evaluation only a non-empty test part.
    """
    external = bool(data_args.external_cohort)
    if external and training:
        raise RunDataError(
            "--external_cohort evaluates a trained model on every image of --data_dir: use it with --do_train False "
            "and --model_name_or_path DIR (the model to evaluate)"
        )
    options = data_args.dataset_options()
    if (data_args.test_fraction or 0) >= 1.0:
        raise RunDataError(
            f"--test_fraction {data_args.test_fraction} leaves no image to train on (a split needs it below 1). "
            + EXTERNAL_COHORT_HINT
        )
    dd = load_histo_dataset(
        data_args.dataset,
        data_args.data_dir,
        split_seed=split_seed,
        on_bad_image=data_args.on_bad_image,
        **({"external_cohort": True} if external else {}),
        **options,
    )
    given = "split_file" in options or "split_files" in options
    for part in ("train", "validation", "test") if training else ("test",):
        if len(dd[part]) > 0:
            continue
        if given:
            what = f"the split file(s) give an empty {part} part"
            fix = f"list {part} images in them" + (f". {EXTERNAL_COHORT_HINT}" if part == "train" else "")
        else:
            what = f"the {part} part of {data_args.dataset} split {split_seed} is empty"
            fix = "the dataset has too few groups for the requested fractions (see --test_fraction/--val_fraction)"
        raise RunDataError(f"{what}: {fix}")
    return dd


def run_data_summary(dd, data_args: DataArguments, model_args, output_dir: str | Path, *, split_seed: int,
                     training: bool = True) -> str:
    """What a run reads and writes, as one block: the data folder actually read (a parent folder given as
    ``--data_dir`` is resolved to the dataset's own), the split, the classes, images per part and class, the
    teacher and the student (or the model evaluated), and the output folder."""
    provenance = read_provenance(dd)
    root = Path(provenance["data_root"])
    given = data_args.data_dir
    read = f"{root}" + (f" (given as --data_dir {given})" if given and Path(given).resolve() != root.resolve() else "")
    if data_args.dataset == "demo":
        read += " (SYNTHETIC images)"
    disjoint = f"{provenance['group_kind']}-disjoint" if provenance["group_disjoint"] else "NOT group-disjoint"
    names = list(dd["test"].features["label"].names)
    lines = [
        "Run data and models:",
        f"  data folder  {read}",
        f"  dataset      {data_args.run_name()}, split seed {split_seed}: {provenance['split_source']} ({disjoint})",
        f"  classes      {len(names)}: {', '.join(names)}",
    ]
    for part, rows in dd.items():
        labels = list(rows.with_format(None)["label"]) if len(rows) else []
        per_class = ", ".join(f"{name} {labels.count(i)}" for i, name in enumerate(names))
        lines.append(f"  {part:<12} {len(rows)} images: {per_class}")
    evaluated = getattr(model_args, "model_name_or_path", None)
    if hasattr(model_args, "student_model"):
        lines.append(f"  teacher      {_teacher_source(data_args, model_args, split_seed, training)}")
        lines.append(f"  student      {evaluated or model_args.student_model}")
    else:
        new = model_args.teacher_config or "the default ViT-L/16 architecture"
        weights = model_args.teacher_weights or model_args.teacher_backbone or "random initial weights"
        lines.append(f"  teacher      {evaluated or f'{new}, backbone from {weights}'}")
    if evaluated and not training:
        lines.append(f"  evaluated    {evaluated} (left as it is)")
    lines.append(f"  output       {output_dir}")
    return "\n".join(lines)


def _teacher_source(data_args: DataArguments, model_args, split_seed: int, training: bool) -> str:
    """The teacher a student run distils from (its split's folder under --split_seeds), or why there is none."""
    if not training:
        return "none (an evaluation)"
    if model_args.kd_weight <= 0:
        return "none (--kd_weight 0: no distillation)"
    path = Path(model_args.teacher_model)
    if data_args.seeds() and (path / f"split_{split_seed}").is_dir():
        return str(path / f"split_{split_seed}")
    return str(model_args.teacher_model)


def log_run_data(dd, data_args: DataArguments, model_args, output_dir: str | Path, *, split_seed: int,
                 training: bool = True) -> None:
    """Log :func:`run_data_summary` (INFO, main process) before any model is built."""
    logger.info(run_data_summary(dd, data_args, model_args, output_dir, split_seed=split_seed, training=training))


def load_processor(checkpoint: str | None, *fallbacks: str | None):
    """The image processor of a run.

    ``checkpoint`` (a trained model to evaluate or fine-tune, ``--model_name_or_path``) must have its own: its
    views (upsizing, crop size, normalisation) are part of the model, so a folder without
    ``preprocessor_config.json`` is refused rather than evaluated with default views. Without a checkpoint: the
    processor saved with the first of ``fallbacks`` (preset or base model dir) that has one, else the paper's
    views."""
    if checkpoint:
        config = Path(checkpoint) / PREPROCESSOR_FILE
        if is_local_path(checkpoint) and not config.is_file():
            raise RunDataError(
                f"{config} not found: the checkpoint {checkpoint} does not record the views it was trained with "
                "(crop size, upsizing, normalisation), and default views would give wrong results. Copy "
                f"{PREPROCESSOR_FILE} from the run that trained it (its output folder, beside config.json), or save "
                "the processor it was trained with there (AmlpfImageProcessor(...).save_pretrained(DIR))"
            )
        try:
            return AmlpfImageProcessor.from_pretrained(checkpoint)
        except OSError as error:
            raise RunDataError(
                f"no image processor for the checkpoint {checkpoint} ({' '.join(str(error).split())}); its "
                f"{PREPROCESSOR_FILE} is needed to evaluate it with the views it was trained with"
            ) from None
    for source in fallbacks:
        if source and (Path(source) / PREPROCESSOR_FILE).is_file():
            return AmlpfImageProcessor.from_pretrained(source)
    return AmlpfImageProcessor()


def export_run_split(dd, output_dir: str | Path) -> Path:
    """Write the run's exact split beside its model (``split.json``, publishable, reloadable with --split_file)."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    return Path(export_split(dd, output_dir / SPLIT_FILE))


def check_teacher_split(teacher_dir: str | Path, dd) -> None:
    """Refuse a teacher trained on other data, or on images of this split's test part (a leak through the
    teacher); images are compared by content fingerprint (``data.compare_with_training_split``)."""
    path = Path(teacher_dir) / SPLIT_FILE
    if not path.is_file():
        logger.warning(f"{path} not found: cannot check that the teacher never saw this split's test images")
        return
    check = compare_with_training_split(path, dd)
    check.raise_if_incompatible()
    logger.info(check.message)


def check_evaluated_checkpoint(model_dir: str | Path, dd, *, external_cohort: bool = False) -> str | None:
    """Before evaluating a checkpoint: refuse test images it was trained or selected on (its ``split.json``);
    when it was trained on other data, say that a generated split evaluates only part of this data. Returns
    the relation to the training data, for the evaluation summary (None without a split.json)."""
    path = Path(model_dir) / SPLIT_FILE
    if not path.is_file():
        logger.warning(
            f"{path} not found: cannot check that the evaluated model never trained on these test images"
        )
        return None
    check = compare_with_training_split(path, dd)
    roots = f"its data root {check.teacher_root or '(not recorded)'}; this run's {check.data_root or '(not recorded)'}"
    if check.status == LEAK:
        examples = ", ".join(ours for ours, _ in check.leaked[:3])
        fix = (
            "evaluate images it never saw"
            if external_cohort
            else f"evaluate the split it was trained with (--split_file {path}) or images it never saw"
        )
        raise RunDataError(
            f"the model in {model_dir} was trained or selected on {len(check.leaked)} of the images this run "
            f"would test (its split file {path}; {roots}), e.g. {examples}: its metrics would be optimistic. "
            f"Fix: {fix}."
        )
    if check.status == OTHER_DATA:
        if external_cohort:
            logger.info(f"the model in {model_dir} was trained on other data ({roots}): an external cohort")
            return "external: no image in common with the model's training split"
        logger.warning(
            f"the model in {model_dir} was trained on other data ({roots}); this run evaluates only the test part "
            "of a split of this data. To evaluate every image as an external cohort, pass --external_cohort"
        )
        return "other data: no image in common with the model's training split"
    logger.info(f"the model's training split {path} holds none of this run's test images in its train/validation")
    return "the model's own data: none of these test images was in its train/validation parts"


def match_model_classes(dd, model_classes: list[str], class_map=None, *, model_source: str):
    """``(dd, facts)`` with the data's labels expressed as the model's classes (``cohort``): by name, through
    ``class_map`` (see ``cohort.parse_class_map``). Data classes the model lacks raise; model classes absent from
    the data are logged (metrics over the present classes). ``facts``: ``class_map`` (data name -> model name,
    where they differ) and ``classes_absent_from_data``."""
    data_classes = list(dd["test"].features["label"].names)
    try:
        mapping = parse_class_map(class_map)
        new_ids, absent = map_class_names(
            data_classes, model_classes, mapping, data_source="the data", model_source=model_source
        )
    except ValueError as error:  # the class map or the class names: the user's to fix
        raise RunDataError(str(error)) from None
    renamed = {name: model_classes[i] for name, i in zip(data_classes, new_ids) if name != model_classes[i]}
    facts = {"class_map": renamed, "classes_absent_from_data": absent}
    if absent:
        logger.warning(
            f"the data has no image of the model's class(es) {absent}: the metrics are computed over the "
            f"{len(model_classes) - len(absent)} classes present (macro averages, AUROC, balanced accuracy); the "
            "recall of an absent class is undefined (null in the results, n/a in the report)"
        )
    if renamed:
        logger.warning("class map (data -> model): " + ", ".join(f"{k} -> {v}" for k, v in renamed.items()))
    if new_ids == list(range(len(model_classes))) and not renamed:
        return dd, facts
    return relabel_to_model_classes(dd, model_classes, new_ids), facts


def model_class_names(model_name_or_path: str) -> list[str]:
    """The classes of a saved model in label order (its config's ``id2label``), without loading its weights."""
    config = AutoConfig.from_pretrained(model_name_or_path)
    return [str(config.id2label[i]) for i in range(config.num_labels)]
