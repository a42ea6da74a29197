"""`python -m modeling_amlpf.report`: Tables and pictures of finished runs (`modeling_amlpf.evaluation.report`)."""

from .evaluation import report as _impl

main = _impl.main

if __name__ == "__main__":
    raise SystemExit(main())  # `slides` returns its exit code (2 on a user error)
