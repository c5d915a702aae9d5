"""The studio's state and actions: one model, one SAE, one dataset, and the instances being inspected.

Every action is a library call the CLI also makes: attribution from `steerpatch.attribute`, edits
through `steerpatch.steer.steer_block_output`, patches from `steerpatch.patch.new_patch`, validation
from `steerpatch.validate`, registration from `steerpatch.registry`. What the studio adds is caching:
each inspected image keeps its residual stream at the hook, so moving a slider runs only the blocks
after the hook and the head.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from steerpatch.data import ImageDataset
from steerpatch.models import LoadedModel, build_zero_shot_head, preprocess_batch
from steerpatch.models.tower import encode_prefix, encode_suffix
from steerpatch.patch import OPS, Edit, Patch, get_op, new_patch
from steerpatch.sae import SAE
from steerpatch.steer import steer_block_output
from steerpatch.studio.imaging import StudioInputError, image_sha256
from steerpatch.studio.index import build_index
from steerpatch.validate import ActivationCache

TOKEN_SCOPES = ("all", "cls", "patches")
MAX_EDITS = 64
MAX_INSTANCES = 64
DRAFT_NAME = "studio-draft"


@dataclass
class Instance:
    """One image under inspection, with what a slider move needs already computed.

    Attributes:
        key: "d<index>" for a dataset item, "u<sha256 prefix>" for an upload.
        image: the RGB image.
        hidden: residual stream after the hook block, (1, T, D).
        probs: clean class probabilities, (C,).
        embedding: L2-normalized image embedding, (E,).
        sha256: SHA-256 of the image's PNG encoding.
        index: dataset index, or None for an upload.
        label: true class, or None for an upload.
    """

    key: str
    image: Image.Image
    hidden: torch.Tensor
    probs: torch.Tensor
    embedding: torch.Tensor
    sha256: str
    index: int | None
    label: str | None


class Workbench:
    """Everything the studio's pages act on.

    Args:
        loaded: the model.
        sae: an SAE whose metadata names its hook block.
        dataset: the labelled images to browse; its classes are the zero-shot classes.
        patch_dir: where saved patches and their reports go.
        group_by: the manifest attribute that names an item's group.
        tracking_uri: MLflow tracking URI for registration (None: steerpatch's default store).
        stats: latent statistics of the SAE, for exemplars (None: exemplars come from the dataset).

    Example:
        >>> bench = Workbench(load_model("concept-clip"), load_sae(default_sae_path()),
        ...                   load_dataset("world/test"), patch_dir="patches")  # doctest: +SKIP
    """

    def __init__(
        self,
        loaded: LoadedModel,
        sae: SAE,
        dataset: ImageDataset,
        *,
        patch_dir: str | Path = "patches",
        group_by: str | None = "shortcut",
        tracking_uri: str | None = None,
        stats: Any = None,
    ) -> None:
        self.loaded = loaded
        self.sae = sae
        self.dataset = dataset
        self.block = int(sae.require_hook().block)
        hook_tokens = sae.require_hook().tokens
        self.default_tokens = hook_tokens if hook_tokens in TOKEN_SCOPES else "all"
        self.patch_dir = Path(patch_dir)
        self.tracking_uri = tracking_uri
        self.stats = stats
        self.head = build_zero_shot_head(loaded, dataset.classes)
        self.classes = list(self.head.classes)
        self.cache = ActivationCache()
        self.index = build_index(loaded, self.head, dataset, self.block, cache=self.cache, group_by=group_by)
        self.dataset = self.index.dataset
        # torch ops on one model from several request threads would only fight over the two cores
        self.lock = threading.RLock()
        self._instances: OrderedDict[str, Instance] = OrderedDict()
        self.exemplar_cache: dict[int, list[int]] = {}
        self._id_positions: dict[str, int] | None = None

    # ---- instances --------------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        """What the page needs to draw its controls."""
        return {
            "model": self.loaded.name,
            "model_fingerprint": self.loaded.fingerprint,
            "sae": str(self.sae.location or ""),
            "sae_architecture": self.sae.architecture,
            "d_sae": self.sae.d_sae,
            "block": self.block,
            "classes": self.classes,
            "group_by": self.index.group_by,
            "groups": self.index.group_values(),
            "n_items": len(self.dataset),
            "accuracy": round(float(self.index.correct.float().mean()), 4) if len(self.dataset) else None,
            "ops": list(OPS),
            "value_ranges": {name: op.editor_range for name, op in OPS.items()},  # each op's own bounds
            "token_scopes": list(TOKEN_SCOPES),
            "default_tokens": self.default_tokens,
            "patch_dir": str(self.patch_dir),
        }

    def instance(self, key: str) -> Instance:
        """The instance named by `key`, computing and caching it on first use.

        Raises:
            StudioInputError: 404 for a key that names no dataset item and no kept upload.
        """
        with self.lock:
            if key in self._instances:
                self._instances.move_to_end(key)
                return self._instances[key]
            if key.startswith("d") and key[1:].isdecimal() and int(key[1:]) < len(self.dataset):
                index = int(key[1:])
                image = self.dataset.load_image(index)
                return self._remember(key, image, index=index, label=self.dataset[index].label)
        raise StudioInputError(
            f"unknown image '{key}'; pick an image from the list (keys d0..d{len(self.dataset) - 1}) "
            "or upload it again",
            status=404,
        )

    def add_upload(self, image: Image.Image) -> Instance:
        """Register an uploaded image as an instance (label unknown)."""
        digest = image_sha256(image)
        with self.lock:
            return self._remember(f"u{digest[:16]}", image, index=None, label=None, sha256=digest)

    def _remember(
        self, key: str, image: Image.Image, *, index: int | None, label: str | None, sha256: str | None = None
    ) -> Instance:
        with torch.inference_mode():
            pixels = preprocess_batch(self.loaded, [image])
            hidden = encode_prefix(self.loaded.model, pixels, self.block)
            features = encode_suffix(self.loaded.model, hidden, self.block)
            probs = self.head.logits(features).softmax(dim=-1)[0]
        inst = Instance(
            key=key,
            image=image,
            hidden=hidden,
            probs=probs,
            embedding=torch.nn.functional.normalize(features[0], dim=-1),
            sha256=sha256 or image_sha256(image),
            index=index,
            label=label,
        )
        self._instances[key] = inst
        while len(self._instances) > MAX_INSTANCES:
            self._instances.popitem(last=False)
        return inst

    def id_positions(self) -> dict[str, int]:
        """Dataset item id -> index in the browsed dataset."""
        if self._id_positions is None:
            self._id_positions = {item.id: i for i, item in enumerate(self.dataset.items)}
        return self._id_positions

    def describe(self, inst: Instance, *, k: int = 5) -> dict[str, Any]:
        """JSON-ready facts about an instance: label, top-k prediction, group."""
        return {
            "key": inst.key,
            "index": inst.index,
            "id": self.dataset[inst.index].id if inst.index is not None else None,
            "label": inst.label,
            "group": self.index.group_of(inst.index) if inst.index is not None else None,
            "sha256": inst.sha256,
            "prediction": self.prediction(inst.probs, k=k),
        }

    def prediction(self, probs: torch.Tensor, *, k: int = 5) -> dict[str, Any]:
        """Top-k classes with probabilities, plus the full distribution."""
        k = max(1, min(k, len(self.classes)))
        top = torch.topk(probs, k)
        return {
            "predicted": self.classes[int(top.indices[0])],
            "top": [
                {"class": self.classes[int(i)], "prob": round(float(p), 5)}
                for p, i in zip(top.values, top.indices, strict=True)
            ],
            "probs": {c: round(float(p), 5) for c, p in zip(self.classes, probs.tolist(), strict=True)},
        }

    # ---- edits ----------------------------------------------------------------------------------

    def parse_edits(self, raw: list[dict[str, Any]]) -> list[Edit]:
        """Check edits from a request and turn them into patch `Edit`s.

        Args:
            raw: dicts with `latent`, `op` and `value`.

        Returns:
            The edits, one per latent.

        Raises:
            StudioInputError: naming the first bad latent index, op or value (status 400 or 422).
        """
        if len(raw) > MAX_EDITS:
            raise StudioInputError(f"{len(raw)} edits sent; at most {MAX_EDITS} edits fit in one draft", 422)
        edits, seen = [], set()
        for item in raw:
            latent, op, value = item.get("latent"), item.get("op"), item.get("value")
            if not isinstance(latent, int) or isinstance(latent, bool) or not 0 <= latent < self.sae.d_sae:
                raise StudioInputError(
                    f"unknown latent {latent!r}; this SAE has latents 0..{self.sae.d_sae - 1}", 422
                )
            if op not in OPS:
                raise StudioInputError(f"unknown op {op!r} for latent {latent}; use one of: {', '.join(OPS)}", 422)
            low, high = get_op(op).editor_range
            if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
                raise StudioInputError(f"{op} value {value!r} for latent {latent} is not a finite number", 422)
            if not low <= value <= high:
                raise StudioInputError(
                    f"{op} value {value} for latent {latent} is out of range; use {low:g}..{high:g}", 422
                )
            if latent in seen:
                raise StudioInputError(f"latent {latent} has two edits; keep one edit per latent", 422)
            seen.add(latent)
            edits.append(Edit(latent=latent, op=op, value=float(value)))
        return edits

    def check_tokens(self, tokens: str | None) -> str:
        """The token scope to edit; refuses anything but 'all', 'cls' and 'patches'."""
        tokens = tokens or self.default_tokens
        if tokens not in TOKEN_SCOPES:
            raise StudioInputError(f"token scope {tokens!r} is unknown; use one of: {', '.join(TOKEN_SCOPES)}", 422)
        return tokens

    def draft(
        self,
        edits: list[Edit],
        tokens: str,
        *,
        name: str = DRAFT_NAME,
        rationale: str = "",
        author: str = "studio",
        provenance: dict[str, Any] | None = None,
    ) -> Patch:
        """A patch holding the current edits, bound to this model and SAE."""
        return new_patch(
            name, self.loaded, self.sae, edits, rationale=rationale, author=author, tokens=tokens,
            provenance=provenance, block=self.block,
        )

    def steered_probs(self, hidden: torch.Tensor, patch: Patch) -> torch.Tensor:
        """Class probabilities after applying `patch` to cached hook activations (B, T, D)."""
        with self.lock, torch.inference_mode():
            steered = steer_block_output(hidden, self.sae, patch)
            features = encode_suffix(self.loaded.model, steered, self.block)
            return self.head.logits(features).softmax(dim=-1)

    def steer(self, key: str, raw_edits: list[dict[str, Any]], tokens: str | None = None) -> dict[str, Any]:
        """The instance's prediction with the edits applied (only the blocks after the hook run).

        Returns:
            `{"before": prediction, "after": prediction, "changed": bool}`.
        """
        inst = self.instance(key)
        patch = self.draft(self.parse_edits(raw_edits), self.check_tokens(tokens))
        after = self.steered_probs(inst.hidden, patch)[0]
        before_pred, after_pred = self.prediction(inst.probs), self.prediction(after)
        return {
            "before": before_pred,
            "after": after_pred,
            "changed": before_pred["predicted"] != after_pred["predicted"],
        }

    def check_latent(self, latent: int) -> int:
        """Refuse a latent index the SAE does not have (404)."""
        if not 0 <= latent < self.sae.d_sae:
            raise StudioInputError(
                f"unknown latent {latent}; this SAE has latents 0..{self.sae.d_sae - 1}", status=404
            )
        return latent
