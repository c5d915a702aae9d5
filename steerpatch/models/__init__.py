"""CLIP models: loading any open_clip model offline, zero-shot heads, fingerprints, training concept-clip."""

from steerpatch.models.fingerprint import fingerprint_model, fingerprint_state_dict
from steerpatch.models.loading import (
    CONCEPT_CLIP,
    LoadedModel,
    known_names,
    load_model,
    read_checkpoint,
    register_concept_clip,
    zoo_dir,
)
from steerpatch.models.tower import resblocks, width_at_block
from steerpatch.models.zeroshot import (
    DEFAULT_TEMPLATES,
    ZeroShotHead,
    build_zero_shot_head,
    classify_dataset,
    classify_images,
    default_classes,
    encode_images,
    group_accuracy,
    preprocess_batch,
)

__all__ = [
    "CONCEPT_CLIP",
    "DEFAULT_TEMPLATES",
    "LoadedModel",
    "ZeroShotHead",
    "build_zero_shot_head",
    "classify_dataset",
    "classify_images",
    "default_classes",
    "encode_images",
    "fingerprint_model",
    "fingerprint_state_dict",
    "group_accuracy",
    "known_names",
    "load_model",
    "preprocess_batch",
    "read_checkpoint",
    "register_concept_clip",
    "resblocks",
    "width_at_block",
    "zoo_dir",
]
