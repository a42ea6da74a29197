"""Compare the runs of one output folder (teacher, student, the student's zero-shot start, ablations such as a
CE-only student, the majority-class baseline of the same test split and, for the paper's settings with the
paper's backbones, the published results) and re-create the runs' pictures from their files.

    python -m modeling_amlpf.report outputs/demo              # teacher/, student/, student-<ablation>/ folders
    python -m modeling_amlpf.report outputs/chaoyang/student  # one run, or a --split_seeds root (split_<k>/)
    python -m modeling_amlpf.report slides RESULTS            # heatmaps of a `wsinfer run` (modeling_amlpf.slides)

Over repeated runs each cell is mean ± sample std: ``split_<k>/`` folders (``--split_seeds``: other splits) or
``seed_<k>/`` folders that each hold a dataset folder's runs (other training seeds, e.g. ``make demo``'s
``outputs/demo/seed_<k>/{teacher,student,student-ce}``).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path

import numpy as np

from . import figures
from .identity import identify_folder, paper_comparison

COLUMNS = ("accuracy", "macro_f1", "macro_auroc", "balanced_accuracy", "cohen_kappa", "mcc")
KINDS = ("teacher", "student")
# Ablations of the student: sibling folders ``student-<name>/`` (e.g. ``student-ce``), one row each.
ABLATION_PREFIX = "student-"
MODEL_TYPES = {"amlpf_teacher": "teacher", "amlpf_clip": "student"}
SPLIT_FILE = "split.json"
ZERO_SHOT_ROW = "student, zero-shot (prompts only)"
# (row name, kind, results file, key prefix)
ROWS = (
    ("teacher", "teacher", "test_results.json", "test_"),
    (ZERO_SHOT_ROW, "student", "zero_shot_results.json", "zero_shot_"),
    ("student (AMLPF-CLIP)", "student", "test_results.json", "test_"),
)
_SPLIT_DIR = re.compile(r"split_(\d+)$")
_SEED_DIR = re.compile(r"seed_(\d+)$")
CARD_FILE = "README.md"
# The recipe lines of a student's model card ("- resampling: `none (gamma 2.0)`"), to describe an ablation row.
_CARD_RECIPE = re.compile(r"^- (resampling|distillation): `([^`]*)`", re.MULTILINE)


def majority_baseline(split_file: Path) -> dict:
    """Metrics of always predicting the most frequent training class on the test part."""
    from .metrics import compute_classification_metrics

    parts = json.loads(split_file.read_text())["parts"]
    train = np.array([row[1] for row in parts["train"]])
    test = np.array([row[1] for row in parts["test"]])
    num_classes = int(max(train.max(), test.max())) + 1
    probs = np.zeros((len(test), num_classes))
    probs[:, np.bincount(train, minlength=num_classes).argmax()] = 1.0
    return compute_classification_metrics(probs, test, [str(i) for i in range(num_classes)], probabilities=True)


# ------------------------------------------------------------------------------------------------ layout
def _numbered_dirs(folder: Path, pattern: re.Pattern) -> list[Path]:
    found = [(int(m.group(1)), p) for p in folder.iterdir() if p.is_dir() and (m := pattern.match(p.name))]
    return [p for _, p in sorted(found)]


def split_dirs(folder: Path) -> list[Path]:
    """The ``split_<k>/`` runs of a ``--split_seeds`` root, by k; empty for a single run."""
    return _numbered_dirs(folder, _SPLIT_DIR)


def seed_dirs(folder: Path) -> list[Path]:
    """The ``seed_<k>/`` folders of a seed sweep (each a dataset folder of runs), by k; empty otherwise."""
    return _numbered_dirs(folder, _SEED_DIR)


def run_dirs(folder: Path) -> list[Path]:
    return split_dirs(folder) or [folder]


def _kind_of(folder: Path) -> str | None:
    if folder.name in KINDS:
        return folder.name
    for run in run_dirs(folder):
        config = run / "config.json"
        if config.is_file():
            return MODEL_TYPES.get(json.loads(config.read_text()).get("model_type"))
    return None


def kind_folders(folder: Path) -> dict[str, Path]:
    """``{name: folder}``: a dataset folder's ``teacher/``, ``student/`` and ``student-<ablation>/`` folders, or the
    folder itself as one kind."""
    found = {kind: folder / kind for kind in KINDS if (folder / kind).is_dir()}
    found.update({p.name: p for p in sorted(folder.iterdir()) if p.is_dir() and p.name.startswith(ABLATION_PREFIX)})
    if found:
        return found
    kind = _kind_of(folder)
    if kind is None:
        raise FileNotFoundError(
            f"{folder} is neither a dataset folder of outputs (with teacher/ or student/, or seed_<k>/ folders of "
            "them) nor a run folder (with config.json, or split_<k>/ runs); pass e.g. outputs/demo or "
            "outputs/demo/seed_1/student"
        )
    return {kind: folder}


def run_groups(folder: Path) -> tuple[dict[str, list[Path]], str | None]:
    """``({name: [run folders]}, repeat)``: every run of each kind over the ``seed_<k>/`` folders (training
    seeds) and ``split_<k>/`` folders (splits) of ``folder``; ``repeat`` names what varies ("seeds", "splits",
    "seeds and splits", or None for single runs)."""
    seeds = seed_dirs(folder)
    groups: dict[str, list[Path]] = {}
    has_splits = False
    for dataset_folder in seeds or [folder]:
        for name, kind_folder in kind_folders(dataset_folder).items():
            splits = split_dirs(kind_folder)
            has_splits = has_splits or bool(splits)
            groups.setdefault(name, []).extend(splits or [kind_folder])
    repeat = {(True, True): "seeds and splits", (True, False): "seeds", (False, True): "splits"}.get(
        (bool(seeds), has_splits)
    )
    return groups, repeat


def _split_info(run: Path) -> dict:
    path = run / SPLIT_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def run_name_of(run: Path) -> str | None:
    """The run name (``breakhis-binary``...) recorded by a run's ``split.json``, as the scripts build it."""
    from types import SimpleNamespace

    from ..data import run_name

    info = _split_info(run)
    if "dataset" not in info:
        return None
    options = info.get("options") or {}
    parts = {name: options.get(name) for name in ("task", "magnification", "resolution")}
    return run_name(SimpleNamespace(dataset=info["dataset"], **parts))


# ------------------------------------------------------------------------------------------------ table
def _cell(values: list[float], unit: str = "splits") -> str:
    """One value in percent, or mean ± sample std over runs (noting the runs where the metric is undefined)."""
    finite = [v for v in values if not math.isnan(v)]
    if not finite:
        return "n/a"
    text = f"{100 * finite[0]:.2f}"
    if len(finite) > 1:
        text = f"{100 * np.mean(finite):.2f} ± {100 * np.std(finite, ddof=1):.2f}"
    if len(finite) < len(values):
        text += f" ({len(finite)} of {len(values)} {unit})"
    return text


def _row(name: str, per_run: list[dict], prefix: str, unit: str = "splits") -> str:
    cells = []
    for key in COLUMNS:
        values = []
        for metrics in per_run:
            value = metrics.get(f"{prefix}{key}", metrics.get(key))
            values.append(float("nan") if value is None else float(value))
        cells.append(_cell(values, unit))
    return f"| {name} | " + " | ".join(cells) + " |"


def _paper_row(paper: dict) -> str:
    cells = []
    for key in COLUMNS:
        entry = paper["metrics"].get(key)
        if entry is None:
            cells.append("n/a")
        else:
            std = entry.get("std")
            cells.append(f"{100 * entry['mean']:.2f}" + ("" if std is None else f" ± {100 * std:.2f}"))
    return f"| {figures.PAPER_LABEL}, AMLPF-CLIP | " + " | ".join(cells) + " |"


def _titles() -> list[str]:
    from .metrics import METRIC_TITLES

    return [METRIC_TITLES[key] for key in COLUMNS]


def ablation_label(name: str, runs: list[Path]) -> str:
    """A row name for a ``student-<name>/`` folder, with what its model card records of the recipe (resampling,
    distillation), e.g. ``student-ce: CE only (resampling none, distillation off)``."""
    recipe: dict[str, str] = {}
    for run in runs:
        card = run / CARD_FILE
        if card.is_file():
            recipe = dict(_CARD_RECIPE.findall(card.read_text(encoding="utf-8")))
            break
    resampling = recipe.get("resampling", "").split(" (")[0]
    distillation = recipe.get("distillation", "")
    if not recipe:
        return name
    detail = f"resampling {resampling or '?'}, distillation {distillation or '?'}"
    if resampling == "none" and distillation == "off":
        return f"{name}: CE only ({detail})"
    return f"{name} ({detail})"


def _rows(groups: dict[str, list[Path]]):
    """``(row name, runs, results file, key prefix)`` in table order: teacher, zero-shot, student, ablations."""
    for name, kind, file, prefix in ROWS:
        if kind in groups:
            yield name, [run for run in groups[kind] if (run / file).is_file()], file, prefix
    for folder in sorted(name for name in groups if name.startswith(ABLATION_PREFIX)):
        runs = [run for run in groups[folder] if (run / "test_results.json").is_file()]
        yield ablation_label(folder, runs), runs, "test_results.json", "test_"


def render_report(run_dir: Path) -> str:
    """A markdown table of test metrics (%) of every run in ``run_dir``, with a preamble above and notes under it.

    ``run_dir`` is a dataset folder (``teacher/``, ``student/``, ``student-<ablation>/``), a folder of
    ``seed_<k>/`` dataset folders, one kind's folder, or a ``--split_seeds`` root; over several runs each cell is
    mean ± sample std.
    """
    run_dir = Path(run_dir)
    groups, repeat = run_groups(run_dir)
    unit = repeat or "runs"
    titles = _titles()
    lines = ["| model | " + " | ".join(titles) + " |", "|---|" + "---|" * len(titles)]
    notes, baseline_runs, dataset, n_runs, all_runs = [], None, None, set(), []
    rows = [row for row in _rows(groups) if row[1]]
    most = max((len(runs) for _, runs, _, _ in rows), default=0)
    for name, runs, file, prefix in rows:
        shown = name if len(runs) == most else f"{name} [{len(runs)} of {most} {unit}]"
        lines.append(_row(shown, [json.loads((run / file).read_text()) for run in runs], prefix, unit))
        n_runs.add(len(runs))
        all_runs += runs
        baseline_runs = baseline_runs or [run for run in runs if (run / SPLIT_FILE).is_file()]
        dataset = dataset or run_name_of(runs[0])
        if name == ZERO_SHOT_ROW:
            notes.append(_zero_shot_note(runs[0]))
    if baseline_runs is None:
        raise FileNotFoundError(
            f"no test_results.json under {run_dir} (teacher/, student/, their split_<k>/ folders, or seed_<k>/ "
            "folders of them): train with --do_predict (the default) first"
        )
    if baseline_runs:
        baselines = [majority_baseline(run / SPLIT_FILE) for run in baseline_runs]
        lines.append(_row("majority-class baseline", baselines, "", unit))
    identities = {identify_folder(run) for run in all_runs}
    paper = figures.paper_results(dataset) if dataset else None
    if paper:
        allowed, reason = paper_comparison(list(identities))
        if allowed:
            lines.append(_paper_row(paper))
            notes.append(
                f"{figures.PAPER_LABEL}: the published AMLPF-CLIP results ({paper['source']}; {paper.get('note')}); "
                "ours use group-disjoint splits and select the epoch on validation, so the published numbers are "
                "an optimistic reference, not a like-for-like comparison."
            )
        else:
            notes.append(f"{figures.PAPER_LABEL} left out: {reason}.")
    if max(n_runs, default=1) > 1:
        what = {"seeds": "training seeds (seed_<k>/, the same split)", "splits": "splits (split_<k>/)"}.get(
            unit, f"{unit} (seed_<k>/ and split_<k>/)"
        )
        notes.append(f"over several {what}, cells are mean ± sample std (ddof=1) of the test metrics over them"
                     + ("; a row with fewer runs says how many in brackets." if len(n_runs) > 1 else "."))
    text = "\n".join(lines)
    if notes:
        text += "\n\nNotes:\n" + "\n".join(f"- {note}" for note in notes)
    preamble = _preamble(dataset, [identity for identity in identities if identity is not None])
    return f"{preamble}\n\n{text}" if preamble else text


def _preamble(dataset: str | None, identities) -> str:
    """What the numbers are when they are not a real result: synthetic images and/or tiny random-init presets."""
    tiny = sorted({identity.kind for identity in identities if identity.test_preset})
    synthetic = dataset == "demo"
    if not tiny and not synthetic:
        return ""
    models = f"tiny random-init test presets ({' and '.join(tiny)})" if tiny else "these models"
    data = "SYNTHETIC demo images (procedurally drawn, not tissue)" if synthetic else f"the {dataset} data"
    return (f"**Read this first:** {models} on {data}. The numbers show that the pipeline learns, not the "
            "paper's accuracy (which needs the UNI teacher, the CLIP RN50 student and a real dataset).")


def _zero_shot_note(run: Path) -> str:
    info = _split_info(run)
    num_classes = len(info.get("class_names") or []) or None
    note = "zero-shot: the student before any training, classifying by its prompts alone."
    if info.get("dataset") == "demo":
        chance = f" (1/{num_classes} = {100 / num_classes:.2f}% here)" if num_classes else ""
        note += (
            " The demo's tiny student preset has a randomly initialised text tower (and image tower), so this row "
            f"is at chance by construction: balanced accuracy ≈ 1/C{chance}, AUROC ≈ 50%, up to the noise of a "
            "small test split. It checks the pipeline; with a pretrained CLIP (the converted RN50) the row "
            "measures what the prompts alone achieve."
        )
    return note


# ------------------------------------------------------------------------------------------------ pictures
def write_figures(run_dir: Path) -> list[Path]:
    """Re-create every picture of the runs in ``run_dir`` (same layouts as ``render_report``)."""
    written = []
    run_dir = Path(run_dir)
    for dataset_folder in seed_dirs(run_dir) or [run_dir]:
        for kind, folder in kind_folders(dataset_folder).items():
            runs = run_dirs(folder)
            for run in runs:
                info = _split_info(run)
                dataset = run_name_of(run) or folder.resolve().parent.name
                title = figures.run_title(kind, dataset, info.get("split_seed"))
                written += [run / name for name in figures.write_run_figures(run, title=title)]
            if split_dirs(folder):
                dataset = run_name_of(runs[0]) or folder.resolve().parent.name
                name = figures.write_splits_figure(
                    folder, dataset=dataset, title=figures.run_title(kind, dataset), compare_to_paper=kind == "student"
                )
                if name:
                    written.append(folder / name)
    return written


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["slides"]:  # a run folder literally named "slides" is still reachable as ./slides
        from ..slides.heatmap import main as slides_main

        return slides_main(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", help="a dataset folder of outputs (e.g. outputs/demo), one run, or a split root")
    parser.add_argument("--no_figures", action="store_true", help="print the table only")
    args = parser.parse_args(argv)
    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        parser.error(f"{run_dir} is not a folder; pass an output folder such as outputs/demo")
    try:
        table = render_report(run_dir)
    except FileNotFoundError as error:
        parser.error(str(error))
    print(f"\nTest metrics (%) in {run_dir}:\n")
    print(table)
    if not args.no_figures:
        written = write_figures(run_dir)
        print(f"\nPictures ({len(written)}):" if written else "\nNo training logs to draw (trained with --do_train?).")
        for path in written:
            print(f"  {path}")


if __name__ == "__main__":
    sys.exit(main())
