"""Histopathology datasets as Hugging Face `DatasetDict`s with group-disjoint, reproducible splits.

    from modeling_amlpf.data import load_histo_dataset
    dd = load_histo_dataset("breakhis", "/data/BreaKHis_v1", task="binary", magnification="40X", split_seed=3)

Readers for Chaoyang, BreaKHis v1, LungHist700, a generic folder per class, and SYNTHETIC demo data
generated locally (`"demo"`, not real histology). The `image` column holds file paths decoded lazily to
RGB; splits never put a patient/slide in two parts; unreadable files raise one `BadImageError` naming all
of them (or are skipped with `on_bad_image="skip"` and listed by `scan_report`). `export_split` publishes
the split used; `split_file=` reloads it exactly.
"""

from .demo import DEMO_CLASS_NAMES, ensure_demo_data
from .errors import BadImageError, DataLayoutError
from .loader import DATASET_NAMES, load_histo_dataset
from .provenance import read_provenance, scan_report
from .scan import ScanReport
from .split_files import export_split, export_split_txt, load_split_file
from .splits import group_stratified_split

__all__ = [
    "DATASET_NAMES",
    "DEMO_CLASS_NAMES",
    "BadImageError",
    "DataLayoutError",
    "ScanReport",
    "ensure_demo_data",
    "export_split",
    "export_split_txt",
    "group_stratified_split",
    "load_histo_dataset",
    "load_split_file",
    "read_provenance",
    "scan_report",
]
