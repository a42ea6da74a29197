"""Compare the runs of one dataset folder: teacher, student, the student's zero-shot start, and the
majority-class baseline of the same test split.

    python -m modeling_amlpf.report outputs/demo
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

COLUMNS = (
    ("accuracy", "Accuracy"),
    ("macro_f1", "Macro F1"),
    ("macro_auroc", "AUROC"),
    ("balanced_accuracy", "Bal. acc."),
    ("cohen_kappa", "Kappa"),
    ("mcc", "MCC"),
)


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


def _row(name: str, metrics: dict, prefix: str) -> str:
    cells = []
    for key, _ in COLUMNS:
        value = metrics.get(f"{prefix}{key}", metrics.get(key))
        cells.append("n/a" if value is None or value != value else f"{100 * float(value):.2f}")
    return f"| {name} | " + " | ".join(cells) + " |"


def render_report(run_dir: Path) -> str:
    lines = ["| model | " + " | ".join(title for _, title in COLUMNS) + " |", "|---|" + "---|" * len(COLUMNS)]
    split_file = None
    for name, file, prefix in (
        ("teacher", run_dir / "teacher" / "test_results.json", "test_"),
        ("student, zero-shot (prompts only)", run_dir / "student" / "zero_shot_results.json", "zero_shot_"),
        ("student (AMLPF-CLIP)", run_dir / "student" / "test_results.json", "test_"),
    ):
        if file.is_file():
            lines.append(_row(name, json.loads(file.read_text()), prefix))
            split_file = split_file or file.parent / "split.json"
    if split_file is None:
        raise FileNotFoundError(f"no test_results.json under {run_dir}/teacher or {run_dir}/student")
    lines.append(_row("majority-class baseline", majority_baseline(split_file), ""))
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", help="a dataset folder of outputs, e.g. outputs/demo")
    args = parser.parse_args(argv)
    print(f"\nTest metrics (%) in {args.run_dir}:\n")
    print(render_report(Path(args.run_dir)))


if __name__ == "__main__":
    main()
