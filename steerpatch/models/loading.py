"""Load any open_clip CLIP: the shipped `concept-clip`, a built-in architecture, a checkpoint,
a `local-dir:` export or a cached `hf-hub:` model, always offline, always as a real `open_clip.CLIP`.

`concept-clip` is registered through open_clip's own model-config mechanism
(`open_clip.add_model_config` on the JSON file shipped in `steerpatch/zoo/`), lazily on first
use, so importing steerpatch never touches open_clip's global config table.
"""

from __future__ import annotations

import contextlib
import difflib
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from steerpatch.errors import ModelError
from steerpatch.models.fingerprint import fingerprint_model

CONCEPT_CLIP = "concept-clip"
_ZOO = Path(__file__).resolve().parent.parent / "zoo"
_CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")


def zoo_dir() -> Path:
    """The folder holding the shipped config, weights and model card."""
    return _ZOO


def concept_clip_config_path() -> Path:
    return _ZOO / f"{CONCEPT_CLIP}.json"


def concept_clip_weights_path() -> Path:
    return _ZOO / f"{CONCEPT_CLIP}.safetensors"


@dataclass
class LoadedModel:
    """A CLIP ready for inference: eval mode, with its preprocess, tokenizer and weight fingerprint."""

    model: Any  # open_clip.CLIP (kept as Any so this module's signature does not import open_clip)
    preprocess: Callable[[Any], torch.Tensor]
    tokenizer: Callable[[list[str]], torch.Tensor]
    name: str
    fingerprint: str
    image_size: int


def register_concept_clip() -> None:
    """Add the shipped `concept-clip` architecture to open_clip's config table (idempotent)."""
    import open_clip

    if CONCEPT_CLIP not in open_clip.list_models():
        open_clip.add_model_config(concept_clip_config_path())


def known_names() -> list[str]:
    """Every model name `load_model` accepts without a prefix."""
    import open_clip

    register_concept_clip()
    return list(open_clip.list_models())


def _unknown_name(spec: str) -> ModelError:
    names = known_names()
    close = difflib.get_close_matches(spec, names, n=5, cutoff=0.5)
    if not close:
        close = difflib.get_close_matches(spec.lower(), [n.lower() for n in names], n=5, cutoff=0.4)
    hint = (
        f"close names: {', '.join(close)}" if close else f"known names include: {', '.join(names[:8])}, ..."
    )
    return ModelError(
        f"unknown model '{spec}'; {hint}; or pass a 'local-dir:/path', 'hf-hub:org/repo' spec, "
        "or an open_clip architecture name with --pretrained CHECKPOINT"
    )


def read_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from `.safetensors`, or from `.pt/.pth/.bin` with `torch.load(weights_only=True)`.

    Raises:
        ModelError: the file is missing, is not a checkpoint, or holds no tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(
            f"weight file '{path}' does not exist; pass the path of a .safetensors or .pt checkpoint"
        )
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as error:  # any decoding failure means the same thing to the user
        reason = str(error).splitlines()[0][:120] if str(error) else type(error).__name__
        raise ModelError(
            f"weight file '{path}' is corrupt or not a checkpoint ({reason}); re-download or re-export it"
        ) from error
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if (
        not isinstance(state, dict)
        or not state
        or not all(isinstance(v, torch.Tensor) for v in state.values())
    ):
        raise ModelError(
            f"weight file '{path}' holds no tensor state dict; pass a CLIP state dict checkpoint"
        )
    # checkpoints saved from DataParallel/DDP prefix every key with "module."
    if all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def _load_state(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        first = str(error).splitlines()[1].strip() if len(str(error).splitlines()) > 1 else str(error)
        raise ModelError(
            f"weights '{source}' do not fit the architecture ({first[:160]}); "
            "pass the checkpoint that matches the model name"
        ) from error


@contextlib.contextmanager
def _offline() -> Iterator[None]:
    """Forbid hub downloads for the duration: weights come from the local cache or not at all."""
    saved = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    # huggingface_hub reads the variable once at import; flip its constant too if it is loaded already
    constants: Any = None
    with contextlib.suppress(ImportError):
        import huggingface_hub.constants as hub_constants

        constants = hub_constants
    saved_constant = getattr(constants, "HF_HUB_OFFLINE", None)
    if constants is not None:
        constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        if constants is not None:
            constants.HF_HUB_OFFLINE = saved_constant
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _image_size(model: Any) -> int:
    size = getattr(model.visual, "image_size", 224)
    return int(size[0] if isinstance(size, tuple | list) else size)


def _finish(model: Any, preprocess: Any, tokenizer: Any, name: str, device: str) -> LoadedModel:
    model = model.to(device).eval()
    return LoadedModel(
        model=model,
        preprocess=preprocess,
        tokenizer=tokenizer,
        name=name,
        fingerprint=fingerprint_model(model),
        image_size=_image_size(model),
    )


class _QuietRandomInit(logging.Filter):
    """Drops open_clip's "No pretrained weights loaded" warning: an init without weights is asked for here
    (concept-clip gets its weights right after; an architecture name alone means a random init)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "No pretrained weights loaded" not in record.getMessage()


def _random_init(name: str) -> tuple[Any, Any]:
    import open_clip

    quiet = _QuietRandomInit()
    root = logging.getLogger()
    root.addFilter(quiet)
    # seeded init without disturbing the caller's random state
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=None)
    finally:
        root.removeFilter(quiet)
    return model, preprocess


def _load_prefixed(spec: str, device: str) -> LoadedModel:
    import open_clip

    if spec.startswith("local-dir:"):
        folder = Path(spec[len("local-dir:") :])
        config = folder / "open_clip_config.json"
        if not config.is_file():
            raise ModelError(
                f"'{spec}': no open_clip_config.json in '{folder}'; "
                "export the model with open_clip's push_to_hf_hub layout (config + weights) into that folder"
            )
        if not any((folder / f"open_clip_{k}").is_file() for k in ("model.safetensors", "pytorch_model.bin")):
            raise ModelError(
                f"'{spec}': no open_clip_model.safetensors or open_clip_pytorch_model.bin in '{folder}'; "
                "copy the weights next to open_clip_config.json"
            )
    try:
        with _offline():
            model, _, preprocess = open_clip.create_model_and_transforms(spec)
            tokenizer = open_clip.get_tokenizer(spec)
    except ModelError:
        raise
    except Exception as error:
        if spec.startswith("hf-hub:"):
            raise ModelError(
                f"'{spec}' is not in the local Hugging Face cache (looked in "
                f"{os.environ.get('HF_HUB_CACHE') or os.environ.get('HF_HOME') or '~/.cache/huggingface'}); "
                f"run `huggingface-cli download {spec[len('hf-hub:') :]}` where a network is available, "
                "or use 'local-dir:/path' with the downloaded files"
            ) from error
        raise ModelError(f"'{spec}' could not be loaded ({str(error).splitlines()[0][:160]})") from error
    return _finish(model, preprocess, tokenizer, spec, device)


def load_model(
    spec: str = CONCEPT_CLIP, *, pretrained: str | None = None, device: str = "cpu"
) -> LoadedModel:
    """Load a CLIP model by spec, offline.

    Args:
        spec: `concept-clip` (the shipped default), any open_clip architecture name (`ViT-B-32`),
            `local-dir:/path` (a folder with open_clip_config.json and weights) or `hf-hub:org/repo`
            (only when already in the local Hugging Face cache).
        pretrained: for architecture names: None for a random init seeded with 0, an open_clip
            pretrained tag (cached weights only), or the path of a checkpoint
            (`.safetensors`, or `.pt/.pth/.bin` read with `torch.load(weights_only=True)`).
            For `concept-clip`, a checkpoint path replaces the shipped weights.
        device: torch device to put the model on.

    Returns:
        A `LoadedModel` in eval mode.

    Raises:
        ModelError: unknown name (with close names), missing or corrupt weights, or weights that are not cached.

    Example:
        >>> loaded = load_model("concept-clip")  # doctest: +SKIP
        >>> loaded.image_size  # doctest: +SKIP
        64
    """
    import open_clip

    if spec.startswith(("local-dir:", "hf-hub:")):
        return _load_prefixed(spec, device)
    register_concept_clip()
    if spec not in open_clip.list_models():
        raise _unknown_name(spec)
    tokenizer = open_clip.get_tokenizer(spec)
    model, preprocess = _random_init(spec)
    if spec == CONCEPT_CLIP and pretrained is None:
        weights = concept_clip_weights_path()
        if not weights.is_file():
            raise ModelError(
                f"shipped weights '{weights}' are missing; reinstall steerpatch or run `steerpatch zoo train`"
            )
        _load_state(model, read_checkpoint(weights), str(weights))
    elif pretrained is not None:
        candidate = Path(pretrained).expanduser()
        if candidate.suffix in _CHECKPOINT_SUFFIXES or candidate.exists():
            _load_state(model, read_checkpoint(candidate), str(candidate))
        else:
            tags = open_clip.list_pretrained_tags_by_model(spec)
            if pretrained not in tags:
                known = ", ".join(tags) if tags else "none"
                raise ModelError(
                    f"pretrained '{pretrained}' is neither a checkpoint file nor a tag of {spec} (tags: {known}); "
                    "pass an existing .safetensors/.pt path"
                )
            try:
                with _offline():
                    model, _, preprocess = open_clip.create_model_and_transforms(spec, pretrained=pretrained)
            except Exception as error:
                raise ModelError(
                    f"weights for {spec} pretrained='{pretrained}' are not in the local cache and this machine "
                    "is offline; download them where a network is available (open_clip caches them under "
                    "~/.cache/huggingface) or pass --pretrained /path/to/checkpoint.safetensors"
                ) from error
    return _finish(model, preprocess, tokenizer, spec, device)

