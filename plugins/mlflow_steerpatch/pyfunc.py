"""The pyfunc of a steerpatch model: images in, class probabilities of the steered model out."""

from __future__ import annotations

import base64
import binascii
import io
from typing import Any

from steerpatch.errors import SteerpatchError

IMAGE_COLUMNS = ("image", "images", "png", "bytes")


def _decode(value: Any, row: int) -> Any:
    from PIL import Image, UnidentifiedImageError

    if isinstance(value, str):
        try:
            value = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise SteerpatchError(
                f"row {row}: the string is not base64; send PNG/JPEG bytes or their base64"
            ) from None
    if not isinstance(value, bytes | bytearray | memoryview):
        raise SteerpatchError(
            f"row {row}: expected PNG/JPEG bytes or base64 text, got {type(value).__name__}"
        )
    try:
        with Image.open(io.BytesIO(bytes(value))) as image:
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError) as error:
        raise SteerpatchError(f"row {row}: cannot decode the image ({error}); send PNG or JPEG") from None


class SteeredClassifier:
    """Zero-shot classification with the patch applied, over the patch's base model.

    The base model is loaded by its recorded id on first use and must match the patch's model
    fingerprint (the steering engine refuses a mismatch).
    """

    def __init__(self, native: Any) -> None:
        self.native = native
        self._loaded: Any = None
        self._head: Any = None

    def _ensure_model(self) -> None:
        if self._loaded is None:
            from steerpatch.models import build_zero_shot_head, load_model

            self._loaded = load_model(self.native.patch.model.id)
            self._head = build_zero_shot_head(self._loaded, self.native.classes)

    def _pixels(self, model_input: Any) -> Any:
        import numpy as np
        import pandas as pd
        import torch

        from steerpatch.models import preprocess_batch

        if isinstance(model_input, pd.DataFrame):
            column = next((c for c in IMAGE_COLUMNS if c in model_input.columns), model_input.columns[0])
            values = list(model_input[column])
        elif isinstance(model_input, np.ndarray | torch.Tensor):
            pixels = torch.as_tensor(np.asarray(model_input), dtype=torch.float32)
            size = self._loaded.image_size
            if pixels.ndim != 4 or tuple(pixels.shape[1:]) != (3, size, size):
                raise SteerpatchError(
                    f"a tensor input must be preprocessed pixels of shape (B, 3, {size}, {size}); got {tuple(pixels.shape)}"
                )
            return pixels
        elif isinstance(model_input, list | tuple):
            values = list(model_input)
        elif isinstance(model_input, bytes | str):
            values = [model_input]
        else:
            raise SteerpatchError(
                f"unsupported input {type(model_input).__name__}; send a DataFrame with an 'image' column "
                "of PNG bytes or base64, or a float array (B, 3, H, W)"
            )
        if not values:
            raise SteerpatchError("the input holds no images; send at least one")
        return preprocess_batch(self._loaded, [_decode(v, i) for i, v in enumerate(values)])

    def predict(self, model_input: Any, params: dict[str, Any] | None = None) -> Any:
        """Class probabilities of the steered model, one row per image and one column per class.

        Args:
            model_input: a pandas DataFrame whose `image` column (or first column) holds PNG/JPEG
                bytes or base64 text; or a float array/tensor of preprocessed pixels (B, 3, H, W).
            params: `{"steered": False}` scores with the unpatched model, for comparison.

        Returns:
            A pandas DataFrame of probabilities with the class names as columns.
        """
        import pandas as pd
        import torch

        from steerpatch.models import encode_images
        from steerpatch.steer import steer

        self._ensure_model()
        pixels = self._pixels(model_input)
        if (params or {}).get("steered", True):
            with steer(self._loaded, self.native.patch, self.native.sae):
                features = encode_images(self._loaded, pixels)
        else:
            features = encode_images(self._loaded, pixels)
        with torch.no_grad():
            probs = self._head.logits(features).softmax(dim=-1).numpy()
        return pd.DataFrame(probs, columns=self.native.classes)

    def get_raw_model(self) -> Any:
        """The native `PatchModel`."""
        return self.native
