"""`python -m modeling_amlpf.export wsinfer ...`: a trained checkpoint as a WSInfer / QuPath model
(`modeling_amlpf.slides`)."""

import sys

from .slides import cli as _impl

main = _impl.main

if __name__ == "__main__":
    sys.exit(main())
