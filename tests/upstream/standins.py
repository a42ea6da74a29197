"""Import transformers' common test modules from the source distribution's ``tests`` folder.

Those modules import a few helpers that the source distribution does not ship (the export and generation test
mixins, the common config kwargs, a CI image fetcher); small stand-ins written here take their place. The folder is
imported as the package ``transformers_upstream_tests`` so that it cannot shadow this project's ``tests``.
"""

from __future__ import annotations

import importlib
import sys
import types
from pathlib import Path

PACKAGE = "transformers_upstream_tests"


class ExportTesterMixin:
    """Stand-in: the real mixin (``tests/exporters/test_export.py``) is not in the source distribution, so its
    ``torch.export`` tests are not run here."""


class GenerationTesterMixin:
    """Stand-in: only checked with ``issubclass``; these models do not generate."""


# Every common ``PreTrainedConfig`` argument with a value other than its default (``ConfigTester`` checks that a
# config keeps each one).
config_common_kwargs = {
    "return_dict": False,
    "output_hidden_states": True,
    "output_attentions": True,
    "dtype": "float16",
    "id2label": {0: "first", 1: "second", 2: "third"},
    "label2id": {"first": 0, "second": 1, "third": 2},
    "problem_type": "multi_label_classification",
    "chunk_size_feed_forward": 5,
    "tie_word_embeddings": False,
}


def url_to_local_path(url: str) -> str:
    """Stand-in for transformers' CI fetcher: offline, so tests that need Hub images fail to load them."""
    return url


def _module(name: str, **attributes) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__path__ = []  # a package, so that submodules resolve
    module.__dict__.update(attributes)
    sys.modules[name] = module
    return module


def import_upstream(tests_dir: str | Path, module: str) -> types.ModuleType:
    """``transformers_upstream_tests.<module>`` from ``tests_dir`` (the sdist's ``tests`` folder)."""
    tests_dir = Path(tests_dir)
    if not (tests_dir / "test_modeling_common.py").is_file():
        raise FileNotFoundError(
            f"{tests_dir} is not transformers' tests folder: run `make test-upstream` (it fetches the source "
            "distribution of the installed transformers into .cache/transformers-src)"
        )
    if PACKAGE not in sys.modules:
        deps = tests_dir.parent.parent / "deps"  # test-only packages, see fetch_transformers_tests.py
        if deps.is_dir():
            sys.path.insert(0, str(deps))
        package = _module(PACKAGE)
        package.__path__ = [str(tests_dir)]
        _module(f"{PACKAGE}.exporters")
        _module(f"{PACKAGE}.exporters.test_export", ExportTesterMixin=ExportTesterMixin)
        _module(f"{PACKAGE}.generation")
        _module(f"{PACKAGE}.generation.test_utils", GenerationTesterMixin=GenerationTesterMixin)
        _module(f"{PACKAGE}.utils")
        _module(f"{PACKAGE}.utils.test_configuration_utils", config_common_kwargs=config_common_kwargs)
        _module("fetch_hub_objects_for_ci", url_to_local_path=url_to_local_path)
    return importlib.import_module(f"{PACKAGE}.{module}")
