"""Histopathology datasets as Hugging Face `DatasetDict`s with group-disjoint, reproducible splits.

    from modeling_amlpf.data import load_histo_dataset
    dd = load_histo_dataset("breakhis", "/data/BreaKHis_v1", task="binary", magnification="40X", split_seed=3)

Readers for Chaoyang, BreaKHis v1, LungHist700, a generic folder per class, and SYNTHETIC demo data
generated locally (`"demo"`, not real histology). The `image` column holds file paths decoded lazily to
RGB; splits never put a patient/slide in two parts (except Chaoyang's `protocol="official"`, recorded as
`group_disjoint: False`); unreadable or missing files raise one `BadImageError` naming all of them (or are
skipped with `on_bad_image="skip"` and listed by `scan_report`). `export_split` publishes the split used,
with the data root and a content fingerprint of every image; `split_file=` reloads it exactly, and
`compare_with_training_split` checks a teacher's split against this run's data.
"""

from .demo import DEMO_CLASS_NAMES, ensure_demo_data
from .index import BadImageError, DataLayoutError
from .loader import DATASET_NAMES, data_root_tag, default_data_dir, load_histo_dataset, run_name
from .scan import ScanReport, content_fingerprint
from .split_files import (
    TrainingSplitCheck,
    compare_with_training_split,
    export_split,
    export_split_txt,
    load_split_file,
    read_provenance,
    scan_report,
)
from .splits import group_stratified_split

__all__ = [
    "DATASET_NAMES",
    "DEMO_CLASS_NAMES",
    "BadImageError",
    "DataLayoutError",
    "ScanReport",
    "TrainingSplitCheck",
    "compare_with_training_split",
    "content_fingerprint",
    "data_root_tag",
    "default_data_dir",
    "run_name",
    "ensure_demo_data",
    "export_split",
    "export_split_txt",
    "group_stratified_split",
    "load_histo_dataset",
    "load_split_file",
    "read_provenance",
    "scan_report",
]
