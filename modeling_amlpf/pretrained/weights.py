"""Pretrained weights for both models, always loaded into an already-constructed model.

``from_pretrained`` builds models on the meta device, so external weights (UNI, timm, HF CLIP) are never loaded
in ``__init__``: they are copied in here, after construction, and then travel with ``save_pretrained``.

- :func:`load_teacher_backbone`: UNI (``hf-hub:MahmoodLab/uni`` or its downloaded ``pytorch_model.bin``), any
  timm weights (a ``hf-hub:`` repo, a pretrained timm name) or a local state dict -> ``teacher.backbone``.
- :func:`student_from_hf_clip`: a transformers ``CLIPModel`` checkpoint (``openai/clip-vit-base-patch16``,
  ``vinid/plip``, ``wisdomik/QuiltNet-B-32``, a local directory) -> a student with the ``"clip"`` backend.
- :func:`load_student`: what the training CLI calls for ``--student_model``: a saved student, a CLIP
  checkpoint or a config-only preset.

Hub failures (gated repository, missing login, offline) end in :class:`HubAccessError`: huggingface_hub's own
error with a one-line hint. Whether a string names a local path or a Hub id is decided by :func:`is_local_path`.
"""

from __future__ import annotations

import contextlib
import json
import os
import zipfile
from pathlib import Path

import timm
import torch
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    HFValidationError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
)
from huggingface_hub.utils import validate_repo_id
from timm.models import load_state_dict
from transformers import AutoConfig, AutoModel, AutoTokenizer, CLIPModel
from transformers.initialization import no_init_weights
from transformers.utils import logging

from ..models.configuration_amlpf import PROMPT_LEVELS, AmlpfClipConfig
from ..models.modeling_amlpf import AmlpfClipForImageClassification, AmlpfTeacherForImageClassification
from ..utils import UserError
from .prompts import parse_levels, select_levels

logger = logging.get_logger(__name__)

STATE_DICT_SUFFIXES = (".bin", ".pth", ".pt")
WEIGHT_SUFFIXES = STATE_DICT_SUFFIXES + (".safetensors",)
# Files that hold a checkpoint's weights, in the order they are looked for in a directory.
WEIGHT_FILE_NAMES = (
    "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json"
)

WRAPPER_KEYS = ("state_dict", "model")
STRIPPED_PREFIXES = ("module.", "backbone.")
UNI_REPO_PAGE = "https://huggingface.co/MahmoodLab/UNI"
HUB_PREFIX = "hf-hub:"
LOGIN = "`hf auth login` (huggingface_hub < 1.0: `huggingface-cli login`) or HF_TOKEN"


def is_local_path(path: str | os.PathLike) -> bool:
    """Whether ``path`` names a local file or folder rather than a Hub repository id: the one place this is decided.

    Local: anything that exists on disk, ``org/name`` whose ``org`` is an existing folder (a missing checkpoint
    inside it, e.g. ``outputs/teacher``), and anything that cannot be a Hub id (``./x``, ``/x``, ``~/x``,
    ``a/b/c``, ``C:\\x``, a bare name such as ``teacher``). A Hub id: ``hf-hub:org/name``, or any other
    ``org/name`` (as ``from_pretrained`` decides: an existing folder wins over a Hub id of the same spelling).
    """
    text = os.fspath(path)
    if text.startswith(HUB_PREFIX):
        return False
    if os.path.exists(os.path.expanduser(text)):
        return True
    if text.count("/") != 1 or os.path.isdir(text.split("/")[0]):
        return True
    try:
        validate_repo_id(text)
    except HFValidationError:
        return True
    return False


class HubAccessError(OSError):
    """The Hugging Face Hub could not provide a checkpoint; the message says how to get access or work offline."""


# ----------------------------------------------------------------------------------------------------- hub errors
def _error_chain(err: BaseException):
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err
        err = err.__cause__ or err.__context__


def _hub_hint(cause: BaseException, repo_id: str) -> str | None:
    """The one-line hint for one of huggingface_hub's access errors, else None."""
    if isinstance(cause, GatedRepoError):
        return f"a gated repository: accept its terms on https://huggingface.co/{repo_id}, then log in with {LOGIN}"
    status = getattr(getattr(cause, "response", None), "status_code", None)
    if isinstance(cause, RepositoryNotFoundError) or (isinstance(cause, HfHubHTTPError) and status in (401, 403)):
        return f"not found or not authorised: check the name; a private or gated repository needs a login ({LOGIN})"
    if isinstance(cause, (LocalEntryNotFoundError, OfflineModeIsEnabled)):
        offline_mode = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
        offline = " (HF_HUB_OFFLINE is set)" if offline_mode else ""
        return f"not in the local Hugging Face cache and the Hub cannot be reached{offline}"
    return None


def hub_access_error(err: BaseException, repo_id: str, *, local_hint: str) -> HubAccessError | None:
    """A :class:`HubAccessError` for ``err`` (raised while fetching ``repo_id``) when huggingface_hub's gated,
    not-found or offline error is among its causes, else None: the Hub's message, a one-line hint, and
    ``local_hint`` (how to use a downloaded copy instead)."""
    for cause in _error_chain(err):
        hint = _hub_hint(cause, repo_id)
        if hint is not None:
            hub_message = str(cause).strip().splitlines()[0] if str(cause).strip() else ""
            return HubAccessError(f"{repo_id}: {hint}; or {local_hint}.\n(Hub: {type(cause).__name__}: {hub_message})")
    return None


@contextlib.contextmanager
def _explain_hub_errors(repo_id: str, *, local_hint: str):
    try:
        yield
    except Exception as err:
        explained = hub_access_error(err, repo_id, local_hint=local_hint)
        if explained is None:
            raise
        raise explained from err


@contextlib.contextmanager
def _hf_token(token: str | None):
    """timm's Hub download takes no token argument: expose ``token`` to it through HF_TOKEN for the call only."""
    if token is None:
        yield
        return
    previous = os.environ.get("HF_TOKEN")
    os.environ["HF_TOKEN"] = token
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("HF_TOKEN", None)
        else:
            os.environ["HF_TOKEN"] = previous


# ----------------------------------------------------------------------------------------------------- state dicts
def _unwrap_state_dict(obj, origin: str) -> dict[str, torch.Tensor]:
    """Unwrap ``{"state_dict": ...}``/``{"model": ...}`` and strip ``module.``/``backbone.`` prefixes shared by
    every key; everything left must be a tensor."""
    while isinstance(obj, dict) and any(isinstance(obj.get(key), dict) for key in WRAPPER_KEYS):
        obj = next(obj[key] for key in WRAPPER_KEYS if isinstance(obj.get(key), dict))
    if not isinstance(obj, dict) or not obj:
        raise ValueError(f"{origin} holds {type(obj).__name__}, not a state dict (a mapping of names to tensors)")
    not_tensors = [key for key, value in obj.items() if not isinstance(value, torch.Tensor)]
    if not_tensors:
        raise ValueError(
            f"{origin}: entries {not_tensors[:10]} are not tensors; it must be a plain state dict "
            "(torch.save(model.state_dict(), path))"
        )
    state_dict = dict(obj)
    stripped = True
    while stripped:
        stripped = False
        for prefix in STRIPPED_PREFIXES:
            if all(key.startswith(prefix) for key in state_dict):
                state_dict = {key[len(prefix):]: value for key, value in state_dict.items()}
                stripped = True
    return state_dict


def _looks_like_torch_file(path: Path) -> bool:
    """A ``torch.save`` zip archive, or a legacy pickle (protocol 2+ starts with byte 0x80)."""
    if zipfile.is_zipfile(path):
        return True
    with open(path, "rb") as handle:
        return handle.read(1) == b"\x80"


class WeightsFileError(UserError, ValueError):
    """A weights file that is not a plain state dict (a pickle that ``weights_only=True`` refuses, a corrupt or
    foreign file): the message names the file and how to re-save it; the scripts print it and exit with 2."""


def refused_pickle_message(error: BaseException) -> str:
    """One line for a ``pickle.UnpicklingError`` that ``torch.load(weights_only=True)`` raised inside a loader
    (``from_pretrained`` of a checkpoint with a ``pytorch_model.bin``): the file, found among the loader's
    arguments in the traceback, and what the unpickler refused; never the advice to unpickle it anyway."""
    files = []
    traceback = error.__traceback__
    while traceback is not None:
        for value in traceback.tb_frame.f_locals.values():
            if isinstance(value, (str, os.PathLike)) and str(value).endswith(WEIGHT_SUFFIXES):
                files += [os.fspath(value)] if os.path.isfile(value) else []
        traceback = traceback.tb_next
    lines = [line.strip() for line in str(error).splitlines()]
    reason = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("WeightsUnpickler error:")), "")
    reason = reason.split(" Please use `torch.serialization")[0] or (lines[0] if lines else type(error).__name__)
    where = f"the weights file {files[-1]}" if files else "a weights file"
    return (
        f"{where} is a pickle that torch.load(weights_only=True) refuses ({reason}): it holds more than tensors, "
        "and arbitrary pickles are never unpickled here. Re-save the model from a trusted copy with "
        "save_pretrained (model.safetensors) or torch.save(model.state_dict(), path)."
    )


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a weights file safely with timm's reader: ``.safetensors``, or a ``torch.save``d state dict loaded with
    ``weights_only=True`` (timm unwraps ``state_dict``/``model`` and strips ``module.``); then only tensors may be
    left."""
    path = Path(path).expanduser()
    if path.suffix not in WEIGHT_SUFFIXES:
        raise ValueError(f"{path}: unknown weights format; expected one of {list(WEIGHT_SUFFIXES)}")
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist")
    if path.suffix != ".safetensors" and not _looks_like_torch_file(path):
        raise WeightsFileError(
            f"{path} is not a PyTorch weights file (neither a torch.save archive nor a pickle): pass the "
            "checkpoint's weights file (.bin/.pth/.pt from torch.save, or .safetensors)"
        )
    try:
        obj = load_state_dict(str(path), use_ema=False, device="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as err:  # weights-only refusal, corrupt archive or safetensors header
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        reason = reason.split(" No automatic unsafe pickle fallback")[0]  # timm's advice to unpickle: not here
        raise WeightsFileError(
            f"{path} is not a plain state dict: it could not be read with torch.load(weights_only=True) / safetensors "
            f"({reason}). The file must hold only tensors (a dict of name -> tensor, optionally under 'state_dict' "
            "or 'model'); re-save it with torch.save(model.state_dict(), path) or as .safetensors. Arbitrary pickles "
            "are never unpickled here."
        ) from None  # the message says it all: one line, no chained traceback
    try:
        return _unwrap_state_dict(obj, str(path))
    except ValueError as err:
        raise WeightsFileError(str(err)) from None


def load_matching_state_dict(module: torch.nn.Module, state_dict: dict, *, origin: str, expected: str,
                             strict: bool = True) -> tuple[list[str], list[str]]:
    """Load ``state_dict`` into ``module``; any key or shape mismatch raises a ValueError that lists the first
    keys and names the expected architecture. ``strict=False`` tolerates (and logs) missing/unexpected keys,
    never shape mismatches. Returns (missing, unexpected)."""
    own = module.state_dict()
    missing = [key for key in own if key not in state_dict]
    unexpected = [key for key in state_dict if key not in own]
    shapes = [f"{key}: {tuple(state_dict[key].shape)} (expected {tuple(value.shape)})"
              for key, value in own.items() if key in state_dict and state_dict[key].shape != value.shape]
    if shapes or (strict and (missing or unexpected)):
        raise ValueError(
            f"{origin} does not match {expected}: missing keys ({len(missing)}): {missing[:10]}; unexpected keys "
            f"({len(unexpected)}): {unexpected[:10]}; shape mismatches ({len(shapes)}): {shapes[:10]}"
        )
    if missing or unexpected:
        logger.warning(
            f"{origin}: loaded non-strictly into {expected}; {len(missing)} missing keys keep their current values "
            f"({missing[:10]}), {len(unexpected)} unexpected keys were not used ({unexpected[:10]})"
        )
    module.load_state_dict({k: v for k, v in state_dict.items() if k in own}, strict=False)
    return missing, unexpected


def build_without_init(model_class, config):
    """Construct a model whose every weight is overwritten next: skipping random init saves seconds per model.
    Callers must load all parameters strictly afterwards."""
    with no_init_weights():
        return model_class(config)


# ----------------------------------------------------------------------------------------------------- teacher
def _weights_file_in(directory: Path) -> Path:
    for name in WEIGHT_FILE_NAMES:
        if (directory / name).is_file() and not name.endswith(".index.json"):
            return directory / name
    found = sorted(p.name for p in directory.iterdir() if p.suffix in WEIGHT_SUFFIXES)
    if len(found) == 1:
        return directory / found[0]
    raise FileNotFoundError(
        f"{directory} holds no single weights file (looked for {WEIGHT_FILE_NAMES[0]}, {WEIGHT_FILE_NAMES[2]}; "
        f"found {found}): pass the file itself"
    )


def resolve_weights_source(source: str) -> tuple[str, str | Path]:
    """``("file", path)``, ``("hub", "hf-hub:<repo>")`` or ``("timm", name)`` for a weights source string."""
    source = str(source)
    if source.startswith(HUB_PREFIX):
        return "hub", source
    path = Path(source).expanduser()
    if path.is_dir():
        return "file", _weights_file_in(path)
    if path.is_file():
        return "file", path
    if path.suffix in WEIGHT_SUFFIXES:
        raise FileNotFoundError(f"weights file {path} does not exist")
    if timm.is_model(source):
        return "timm", source
    if not is_local_path(source):
        return "hub", f"{HUB_PREFIX}{source}"
    if "/" in source or os.sep in source or source.startswith(("~", ".")):
        raise FileNotFoundError(f"weights file or folder {path} does not exist")
    raise ValueError(
        f"{source!r} is neither a weights file ({', '.join(WEIGHT_SUFFIXES)}), a Hub repo id (org/name or "
        "hf-hub:org/name) nor a timm model name"
    )


def _timm_pretrained_state_dict(name: str, backbone_kwargs: dict, token: str | None) -> dict[str, torch.Tensor]:
    repo_id = name[len(HUB_PREFIX):] if name.startswith(HUB_PREFIX) else name
    local_hint = (
        f"download the weights (for UNI: pytorch_model.bin from {UNI_REPO_PAGE}) and pass the file as a local "
        "path (training CLI flag --teacher_weights PATH)"
    )
    with _hf_token(token), _explain_hub_errors(repo_id, local_hint=local_hint):
        pretrained = timm.create_model(name, pretrained=True, num_classes=0, **dict(backbone_kwargs or {}))
    return pretrained.state_dict()


def load_teacher_backbone(
    model: AmlpfTeacherForImageClassification, source: str | os.PathLike, *, token: str | None = None,
    strict: bool = True,
) -> str:
    """Load pretrained weights into ``model.backbone`` (after construction) and record their origin in
    ``model.config.backbone_weights`` (a file's name, never its local path). Returns a short description.

    ``source``: a local ``.bin``/``.pth``/``.pt``/``.safetensors`` state dict (or a directory holding one, e.g.
    ``hf download MahmoodLab/uni --local-dir uni``), ``hf-hub:<repo>`` or ``<org>/<name>`` (created by timm with
    the config's ``backbone_kwargs``, e.g. UNI's ``init_values=1e-5``), or a timm name with pretrained weights.
    """
    config = model.config
    expected = f"the teacher backbone (timm {config.backbone!r} with {config.backbone_kwargs})"
    kind, location = resolve_weights_source(str(source))
    if kind == "file":
        state_dict, label = read_state_dict(location), Path(location).name
    else:
        state_dict, label = _timm_pretrained_state_dict(str(location), config.backbone_kwargs, token), str(location)
    missing, unexpected = load_matching_state_dict(
        model.backbone, state_dict, origin=label, expected=expected, strict=strict
    )
    config.backbone_weights = label
    skipped = f" ({len(missing)} missing, {len(unexpected)} unexpected keys)" if missing or unexpected else ""
    return f"loaded {len(state_dict) - len(unexpected)} tensors from {label} into {config.backbone}{skipped}"


# ----------------------------------------------------------------------------------------------------- students
def _check_text_pooling(text_config: dict, tokenizer, origin: str) -> None:
    """Pooling must find the end-of-text token: HF configs of OpenAI checkpoints keep the legacy
    ``eos_token_id=2``, which means argmax pooling (as ``CLIPModel``); otherwise the ids must agree."""
    eos = text_config.get("eos_token_id")
    if eos == 2:
        if tokenizer.eos_token_id != len(tokenizer) - 1:
            logger.warning(
                f"{origin}: text_config.eos_token_id=2 means argmax pooling, but the tokenizer's end-of-text id "
                f"({tokenizer.eos_token_id}) is not its highest id ({len(tokenizer) - 1}); pooling follows CLIPModel"
            )
    elif eos != tokenizer.eos_token_id:
        raise ValueError(
            f"{origin}: text_config.eos_token_id ({eos}) differs from the tokenizer's eos_token_id "
            f"({tokenizer.eos_token_id}); the text tower would pool the wrong token. Use the checkpoint's tokenizer."
        )


def student_from_hf_clip(
    name_or_path: str | os.PathLike, class_names: list[str], prompts: dict[str, list[str]], *,
    tokenizer=None, token: str | None = None, **config_overrides,
) -> tuple[AmlpfClipForImageClassification, object]:
    """A student (``vision_backend="clip"``) with the towers, projections and logit scale of a transformers
    ``CLIPModel`` checkpoint, and its tokenizer; the prompts are encoded by the checkpoint's text tower."""
    origin = str(name_or_path)
    local_hint = f"download it (hf download {origin} --local-dir DIR) where the Hub is reachable and pass DIR"
    with _explain_hub_errors(origin, local_hint=local_hint):
        clip = CLIPModel.from_pretrained(name_or_path, token=token, dtype=torch.float32)
        if tokenizer is None:
            tokenizer = AutoTokenizer.from_pretrained(name_or_path, token=token)
    clip_config = clip.config
    projection_dim = int(clip_config.projection_dim)
    text_config = dict(clip_config.text_config.to_dict(), projection_dim=projection_dim)
    vision_config = dict(clip_config.vision_config.to_dict(), projection_dim=projection_dim)
    _check_text_pooling(text_config, tokenizer, origin)
    levels = list(config_overrides.pop("prompt_levels", None) or [lvl for lvl in PROMPT_LEVELS if lvl in prompts])
    config = AmlpfClipConfig(
        **{
            "vision_backend": "clip", "vision_config": vision_config, "text_config": text_config,
            "projection_dim": projection_dim, "logit_scale_init_value": clip.logit_scale.item(),
            "prompt_levels": levels, "class_names": list(class_names), **config_overrides,
        }
    )
    model = build_without_init(AmlpfClipForImageClassification, config)
    weights = clip.state_dict()
    towers = {
        "vision_model": ("vision_model.", "visual_projection."), "text_model": ("text_model.", "text_projection.")
    }
    unused = [k for k in weights if k != "logit_scale" and not k.startswith(sum(towers.values(), ()))]
    if unused:
        raise ValueError(f"{origin}: CLIPModel tensors with no place in the student: {unused[:10]}")
    for attribute, prefixes in towers.items():
        tower = getattr(model, attribute)
        part = {k: v for k, v in weights.items() if k.startswith(prefixes)}
        load_matching_state_dict(tower, part, origin=origin, expected=f"a {type(tower).__name__}")
    with torch.no_grad():
        model.logit_scale.copy_(clip.logit_scale.detach().reshape(()))
    model.set_prompts(prompts, tokenizer, class_names=list(class_names), levels=levels)
    return model.eval(), tokenizer


def _has_weights(directory: Path) -> bool:
    return any((directory / name).is_file() for name in WEIGHT_FILE_NAMES)


def _current_classes(model) -> list[str]:
    return [model.config.id2label[i] for i in range(model.config.num_labels)]


def _sync_prompts(model, tokenizer, class_names, prompts) -> None:
    """Re-run ``set_prompts`` when the requested classes/prompts differ from the checkpoint's."""
    current = _current_classes(model)
    names = list(class_names) if class_names is not None else current
    if prompts is None:
        if names != current:
            raise ValueError(
                f"the checkpoint's classes {current} differ from {names}: pass prompts for the new classes"
            )
        return
    levels = [level for level in PROMPT_LEVELS if level in prompts]
    wanted = {level: list(prompts[level]) for level in levels}
    if names != current or levels != list(model.config.prompt_levels) or wanted != (model.config.prompts or {}):
        model.set_prompts(wanted, tokenizer, class_names=names, levels=levels)


def load_student(
    name_or_path: str | os.PathLike, class_names: list[str] | None = None,
    prompts: dict[str, list[str]] | None = None, tokenizer=None, *, token: str | None = None,
) -> tuple[AmlpfClipForImageClassification, object]:
    """The student for ``--student_model``: a saved AMLPF student (directory or Hub id; prompts re-encoded when
    ``class_names``/``prompts`` differ), a transformers CLIP checkpoint (:func:`student_from_hf_clip`), or a
    config-only preset directory (random weights, e.g. ``configs/models/student-tiny``)."""
    origin = str(name_or_path)
    path = Path(name_or_path).expanduser()
    local_hint = f"download it (hf download {origin} --local-dir DIR) where the Hub is reachable and pass DIR"
    if is_local_path(origin) and not path.exists():
        raise FileNotFoundError(
            f"student checkpoint {path} does not exist (expected a directory or a Hub id org/name)"
        )
    if path.is_file():
        raise ValueError(
            f"{path} is a file; a student is a checkpoint directory or a Hub id. Convert open_clip/OpenAI files "
            "first: "
            f"python -m modeling_amlpf.convert open_clip --checkpoint {path} --model RN50 --output_dir DIR"
        )
    if path.is_dir():
        config_file = path / "config.json"
        if not config_file.is_file():
            raise FileNotFoundError(
                f"{path} has no config.json: expected a student checkpoint (save_pretrained output), a CLIP "
                "checkpoint directory, or an open_clip file converted with "
                "`python -m modeling_amlpf.convert open_clip`"
            )
        model_type = json.loads(config_file.read_text()).get("model_type")
    else:
        with _explain_hub_errors(origin, local_hint=local_hint):
            model_type = AutoConfig.from_pretrained(origin, token=token).model_type

    if model_type == "clip":
        if class_names is None or prompts is None:
            raise ValueError(f"{origin} is a CLIP checkpoint: class_names and prompts are needed to build a student")
        return student_from_hf_clip(name_or_path, class_names, prompts, tokenizer=tokenizer, token=token)
    if model_type != AmlpfClipConfig.model_type:
        raise ValueError(
            f"{origin} has model_type {model_type!r}; expected {AmlpfClipConfig.model_type!r} (a saved student) or "
            "'clip' (a transformers CLIP checkpoint). open_clip/OpenAI files: "
            "python -m modeling_amlpf.convert open_clip"
        )
    if path.is_dir() and not _has_weights(path):
        logger.warning(f"{path} has a config but no weights ({', '.join(WEIGHT_FILE_NAMES)}): random initialisation")
        model = AutoModel.from_config(AutoConfig.from_pretrained(path))
    else:
        with _explain_hub_errors(origin, local_hint=local_hint):
            model = AutoModel.from_pretrained(name_or_path, token=token)
    if tokenizer is None:
        try:
            tokenizer = AutoTokenizer.from_pretrained(name_or_path, token=token)
        except (OSError, ValueError) as err:
            raise ValueError(
                f"{origin} has no usable tokenizer files ({err}); save the tokenizer with the checkpoint "
                "(tokenizer.save_pretrained(dir)) or pass tokenizer="
            ) from err
    _sync_prompts(model, tokenizer, class_names, prompts)
    return model, tokenizer


def apply_checkpoint_prompts(
    model: AmlpfClipForImageClassification, tokenizer, class_names: list[str], prompts: dict | None = None,
    levels=None, *, training: bool = True,
) -> None:
    """Encode into a trained student exactly the prompts asked for.

    ``prompts`` (a prompts file) are re-encoded; None keeps the checkpoint's own prompt texts. ``levels``
    (``--prompt_levels``) selects levels of those; levels the checkpoint was trained with keep their learned
    fusion weights (with ``fusion="softmax"`` the softmax then runs over the kept levels), so a level ablation
    evaluates the trained model without the dropped levels. A level the checkpoint's fusion never learned has no
    weight to keep: refused in an evaluation (``training=False``), started at the initial weight when training
    goes on.
    """
    config = model.config
    trained = list(config.prompt_levels)
    levels = list(parse_levels(levels)) if levels else trained
    if prompts is None:
        saved = dict(config.prompts or {})
        available = [level for level in parse_levels(None) if level in saved]  # canonical order
        absent = [level for level in levels if level not in saved]
        if absent:
            raise UserError(
                f"--prompt_levels asks for {absent}, but the checkpoint has prompts for the level(s) {available} "
                "only: pass --prompts_file FILE (label/basic/detailed prompts per class) to encode new ones, or "
                f"choose among {available}"
            )
        if levels == trained:
            return  # the prompts and fusion weights it was trained and saved with
        prompts = saved
    untrained = [level for level in levels if level not in trained]
    if untrained and not training:
        raise UserError(
            f"the checkpoint's fusion was trained on the levels {trained}; {untrained} has no learned fusion weight, "
            f"so an evaluation with it would not be of the trained model: choose --prompt_levels among {trained}"
        )
    learned = dict(zip(trained, model.fusion_weights.detach().clone()))
    model.set_prompts(select_levels(prompts, levels), tokenizer, class_names=class_names, levels=levels)
    if levels != trained:  # set_prompts re-created the fusion weights: put back the learned ones
        with torch.no_grad():
            for i, level in enumerate(levels):
                if level in learned:
                    model.fusion_weights[i] = learned[level]
        kept = {level: round(float(learned[level]), 4) for level in levels if level in learned}
        logger.warning(
            f"prompt levels {levels} of a checkpoint trained with {trained} ({config.fusion} fusion): the kept levels "
            f"keep their learned fusion weights {kept}"
            + (f"; {untrained} start at the initial weight" if untrained else "")
        )
