"""`python -m modeling_amlpf.presets`: write the tiny model presets (`modeling_amlpf.pretrained.presets`)."""

from .pretrained import presets as _impl

main = _impl.main

if __name__ == "__main__":
    main()
