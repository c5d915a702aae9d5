"""Cost of `steerpatch suggest`: wall time, candidates evaluated per second, one candidate / one full forward.

Setup: the embedded default (concept-clip, SAE at block 2 of 4), one conflicting image it gets wrong
(from a generated world, seed 0) and an unlabelled pool (another seed). `suggest` runs end to end;
then one candidate (the top suggestion) is scored over the pool's cached hook activations and set
against one full forward pass (`encode_image` plus the zero-shot head over already preprocessed
pixels, no decoding) over the same images, so the ratio is conservative.

Run:
    .venv/bin/python bench/bench_suggest.py [--n 1200] [--budget 49] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1200, help="pool images")
    parser.add_argument("--budget", type=int, default=49, help="candidates suggest evaluates")
    parser.add_argument("--repeats", type=int, default=3, help="timed candidate/forward pairs (median reported)")
    args = parser.parse_args(argv)
    if args.n < 1 or args.budget < 1 or args.repeats < 1:
        parser.error("--n, --budget and --repeats must be at least 1")

    import numpy as np
    import torch

    from steerpatch.data import iter_image_batches, load_dataset
    from steerpatch.models import build_zero_shot_head, classify_dataset, load_model
    from steerpatch.models.tower import num_blocks
    from steerpatch.sae import default_sae_path, load_sae
    from steerpatch.suggest import suggest
    from steerpatch.validate import ActivationCache, score_patch
    from steerpatch.world import write_world

    loaded = load_model("concept-clip")
    sae = load_sae(default_sae_path())
    with tempfile.TemporaryDirectory() as tmp:
        world, pool = Path(tmp) / "world", Path(tmp) / "pool"
        write_world(world, split="test", n=240, seed=0, progress=False)
        write_world(pool, split="test", n=args.n, seed=1, progress=False)
        data = load_dataset(world)
        head = build_zero_shot_head(loaded, data.classes)
        items = [i for i in data.items if i.attributes.get("shortcut") == "conflicting"]
        predicted = classify_dataset(loaded, data, head, items=items, progress=False)
        item = next(i for i, p in zip(items, predicted, strict=True) if p != i.label)

        start = time.perf_counter()
        found = suggest(loaded, sae, [item.path], item.label, pool, budget=args.budget)
        wall = time.perf_counter() - start

        unlabelled = load_dataset(pool)
        cached = ActivationCache().get(loaded, unlabelled, sae.require_hook().block, progress=False)
        batches = [b.pixels for b in iter_image_batches(unlabelled, loaded.preprocess, batch_size=64)]
        labels = np.zeros(len(cached.ids), dtype=np.int64)

        def full_forward() -> float:
            t = time.perf_counter()
            with torch.no_grad():
                for pixels in batches:
                    head.logits(loaded.model.encode_image(pixels)).softmax(-1)
            return time.perf_counter() - t

        def candidate() -> float:
            t = time.perf_counter()
            score_patch(loaded.model, head, sae, found.patches[0], cached, labels=labels)
            return time.perf_counter() - t

        full_forward(), candidate()  # warm-up
        fulls, cands = [], []
        for _ in range(args.repeats):
            fulls.append(full_forward())
            cands.append(candidate())

    t = found.timings
    f, c = statistics.median(fulls), statistics.median(cands)
    print(f"pool {args.n} images, concept-clip (hook after block {sae.hook.block} of {num_blocks(loaded)}), SAE {sae.d_sae} latents, budget {args.budget}, "
          f"torch threads {torch.get_num_threads()}")
    print(f"suggest wall time              {wall:.1f} s  (cache {t['cache_s']:.1f}, propose {t['propose_s']:.1f}, "
          f"search {t['sweep_s']:.1f}, re-measure {t['final_s']:.1f})")
    print(f"candidates evaluated           {int(t['evaluations'])}  ({t['evaluations_per_s']:.2f} /s on the search sample "
          f"of {found.inputs['search_sample']} images)")
    print(f"full forward over the pool     {f:.3f} s (median of {args.repeats})")
    print(f"one candidate over the pool    {c:.3f} s (median of {args.repeats})")
    print(f"ratio candidate / full forward {c / f:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
