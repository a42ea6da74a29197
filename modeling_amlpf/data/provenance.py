"""Where a loaded dataset came from, stored in its `DatasetInfo` so that it survives `map`, `select`,
`with_transform` and `save_to_disk`.

`info.description` holds a human-readable summary followed by one line `amlpf-provenance: <JSON>`; the
JSON records the dataset name, options, split seed and source, class names and the image-scan report.
`read_provenance(ds)` and `scan_report(ds)` read it back.
"""

from __future__ import annotations

import json

from datasets import Dataset, DatasetDict

from .scan import ScanReport

MARKER = "amlpf-provenance: "


def describe(summary: str, provenance: dict) -> str:
    return f"{summary}\n{MARKER}{json.dumps(provenance, sort_keys=True, default=str)}"


def read_provenance(data: Dataset | DatasetDict) -> dict:
    """The provenance dict of a dataset (or of the first part of a DatasetDict) made by `load_histo_dataset`."""
    dataset = next(iter(data.values())) if isinstance(data, DatasetDict) else data
    description = dataset.info.description or ""
    position = description.rfind(MARKER)
    if position < 0:
        raise ValueError(
            "This dataset carries no amlpf provenance; it was not made by modeling_amlpf.data.load_histo_dataset."
        )
    return json.loads(description[position + len(MARKER) :].splitlines()[0])


def scan_report(data: Dataset | DatasetDict) -> ScanReport:
    """The image-scan report of a loaded dataset: bad images found (and skipped), 8-bit copies, counts."""
    return ScanReport.from_dict(read_provenance(data)["scan"])
