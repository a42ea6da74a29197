"""`python -m modeling_amlpf.convert`: OpenAI / open_clip checkpoints to students (`pretrained.convert`)."""

from .pretrained import convert as _impl

main = _impl.main

if __name__ == "__main__":
    main()
