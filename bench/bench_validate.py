"""Cost of validating one more candidate patch, relative to one full forward pass over the same images.

Setup: random-init open_clip ViT-B-32 (12 blocks), a standard SAE of 16 x 768 latents hooked at block 8,
a generated held-out world. The hook activations are cached once; each further candidate runs the
steering edit, blocks 9..11, the head and the report. The full forward pass is `encode_image` plus the
zero-shot head over the already preprocessed pixels (no decoding), so the ratio is conservative.

Run:
    .venv/bin/python bench/bench_validate.py [--n 256] [--repeats 3]

Goal: ratio <= 0.45 (limit 0.33 for the stretch).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path


def _sae(d_in: int, d_sae: int, block: int):
    import torch

    from steerpatch.sae import SAE, SAEConfig
    from steerpatch.sae.config import hook_metadata

    gen = torch.Generator().manual_seed(0)
    w_dec = torch.randn(d_sae, d_in, generator=gen)
    w_dec = w_dec / w_dec.norm(dim=-1, keepdim=True)
    tensors = {
        "W_enc": w_dec.T.contiguous(),
        "b_enc": torch.full((d_sae,), -0.5),
        "W_dec": w_dec,
        "b_dec": torch.zeros(d_in),
    }
    cfg = SAEConfig(d_in=d_in, d_sae=d_sae, architecture="standard", metadata=hook_metadata(block, "all"))
    return SAE(cfg, tensors)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=256, help="held-out images")
    parser.add_argument("--repeats", type=int, default=3, help="timed candidates (median reported)")
    parser.add_argument("--block", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args(argv)

    import torch

    from steerpatch.data import iter_image_batches, load_dataset
    from steerpatch.models import build_zero_shot_head, load_model
    from steerpatch.patch import new_patch
    from steerpatch.validate import ActivationCache, Validator
    from steerpatch.world import generate_world

    loaded = load_model("ViT-B-32")
    sae = _sae(int(loaded.model.visual.transformer.width), 16 * 768, args.block)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "test"
        generate_world(root, split="test", n=args.n, seed=0, progress=False)
        data = load_dataset(root)
        head = build_zero_shot_head(loaded, data.classes)
        batches = [b.pixels for b in iter_image_batches(data, loaded.preprocess, batch_size=args.batch_size)]

        def full_forward() -> float:
            start = time.perf_counter()
            with torch.no_grad():
                for pixels in batches:
                    head.logits(loaded.model.encode_image(pixels)).softmax(-1)
            return time.perf_counter() - start

        cache = ActivationCache()
        validator = Validator(loaded, sae, data, group_by="shortcut", cache=cache, batch_size=args.batch_size,
                              progress=False)
        first = new_patch("bench-0", loaded, sae, [(0, "scale", 0.0)], rationale="benchmark", author="bench")
        start = time.perf_counter()
        validator.validate(first, dose=False)  # fills the cache: prefix + suffix once
        cold = time.perf_counter() - start

        full_forward()  # warm-up
        full, candidate = [], []
        for k in range(1, args.repeats + 1):
            full.append(full_forward())
            edits = [(7 * k + j, "scale", 0.0) for j in range(8)]
            patch = new_patch(f"bench-{k}", loaded, sae, edits, rationale="benchmark", author="bench")
            start = time.perf_counter()
            validator.validate(patch, dose=False)
            candidate.append(time.perf_counter() - start)
        assert cache.misses == 1, "every further candidate must reuse the cached hook activations"

    f, c = statistics.median(full), statistics.median(candidate)
    print(f"images {args.n}, ViT-B-32 random init, hook block {args.block} of 12, SAE 12288 latents, 8 edits, "
          f"torch threads {torch.get_num_threads()}")
    print(f"first validation (fills cache) {cold:.2f} s")
    print(f"full forward over the set      {f:.3f} s (median of {args.repeats})")
    print(f"one more candidate             {c:.3f} s (median of {args.repeats})")
    ratio = c / f
    print(f"ratio candidate / full forward {ratio:.3f}  (goal <= 0.45, limit 0.33)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
