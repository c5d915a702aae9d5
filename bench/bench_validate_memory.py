"""Validation at any size: peak memory, decoding hidden behind compute, and candidates over a spilled cache.

Setup: held-out "photos" made from the concept world, each rendered sample upscaled to 1024x768 and
saved as JPEG (about what a phone photo costs to decode), with the world's manifest. Measured, in one run:

1. Peak resident memory of `steerpatch validate` (a child process, `os.wait4`) on concept-clip with the
   shipped water-shortcut patch, at --n-small and --n photos: ratio and absolute figure.
2. Validation throughput (stream, decode in threads, preprocess, full forward, cache) over pure forward
   throughput (`encode_image` + head on already preprocessed tensors, same model and batch), alternating
   --repeats times (median ratio), and the serial cost of each stage per image, which says how many
   decoding cores it takes to hide decoding behind the forward pass. The same validation pass with
   `--fast-decode` (JPEGs decoded at reduced scale, `steerpatch.pixels.draft`) runs in the same
   rounds, next to the exact one; its top-1 agreement with the exact pass (zero-shot predictions of
   the unpatched embeddings) and its largest pixel difference are reported with it.
3. One more candidate patch over one forward, per image, with the activations on disk (spilled shards)
   and in memory; the on-disk figure over the in-memory one.
4. The same on random-init ViT-B-32 (SAE of 12288 latents at block 8) at --n-vit photos, spilled, with
   its peak memory too.

Run (full sizes, about half an hour on 2 cores):
    .venv/bin/python bench/bench_validate_memory.py --n 10000 --n-small 1000 --n-vit 5000
Quick check, or one part at a time:
    .venv/bin/python bench/bench_validate_memory.py --n 400 --n-small 40 --n-vit 64
    .venv/bin/python bench/bench_validate_memory.py --only vit --n-vit 5000
Throughput and stage costs only (no peak-memory children):
    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_validate_memory.py --only concept-clip --no-rss --n 1000 --n-small 1000

Goals: RSS ratio <= 1.1 and <= 2 GB at --n; throughput ratio >= 0.85; disk / memory candidate <= 1.2.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PHOTO = (1024, 768)


def _photo(job: tuple[str, int, str]) -> str:
    from PIL import Image

    from steerpatch.world.sampling import make_sample

    root, index, split = job
    sample = make_sample(split, 0, index)
    rel = f"{sample.shape}/{split}-{index:05d}.jpg"
    Image.Image.resize(sample.render(), PHOTO, Image.Resampling.BICUBIC).save(Path(root) / rel, quality=90)
    return json.dumps({"path": rel, "label": sample.label, "attributes": sample.attributes()})


def make_photos(root: Path, n: int, processes: int) -> list[str]:
    """Render n world samples as 1024x768 JPEG photos under root (ImageFolder + manifest); the manifest rows."""
    from multiprocessing import Pool

    from steerpatch.world.render import SHAPES

    for shape in SHAPES:
        (root / shape).mkdir(parents=True, exist_ok=True)
    with Pool(processes) as pool:
        rows = pool.map(_photo, [(str(root), i, "test") for i in range(n)], chunksize=64)
    (root / "manifest.jsonl").write_text("\n".join(rows) + "\n")
    return rows


def subset(root: Path, rows: list[str], out: Path) -> Path:
    """A dataset of the first len(rows) photos of root, hard-linked (no copy)."""
    for row in rows:
        rel = json.loads(row)["path"]
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        os.link(root / rel, out / rel)
    (out / "manifest.jsonl").write_text("\n".join(rows) + "\n")
    return out


# A child's ru_maxrss starts at its parent's resident size at fork (Linux keeps the old high-water mark
# across exec), so a child forked from a large process reports at least that. A small launcher process
# forks the real child instead and reports the child's own peak on its stdout.
_LAUNCHER = (
    "import os, sys\n"
    "pid = os.fork()\n"
    "if pid == 0:\n"
    "    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)\n"
    "    os.execvp(sys.argv[1], sys.argv[1:])\n"
    "_, status, usage = os.wait4(pid, 0)\n"
    "print(usage.ru_maxrss, os.waitstatus_to_exitcode(status))\n"
)


def measure_child(argv: list[str]) -> tuple[float, float]:
    """Peak resident memory (MB) and wall seconds of one child process, measured by a small launcher."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _LAUNCHER, *argv], capture_output=True, check=False)
    fields = proc.stdout.decode(errors="replace").split()
    code = int(fields[1]) if len(fields) == 2 else proc.returncode
    if code not in (0, 1):  # 1 is a failed verdict: the run itself was fine
        lines = proc.stderr.decode(errors="replace").strip().splitlines()
        raise SystemExit(f"{' '.join(argv)} exited {code}: {lines[-1] if lines else ''}")
    return int(fields[0]) / 1024, time.perf_counter() - start


def stage_costs(loaded, data, *, batch_size: int, n: int, repeats: int) -> dict[str, float]:
    """Milliseconds per image of each stage of the validation pass, run one after another in this thread.

    decode: open + decode the JPEG; preprocess: the model's transform (PIL resize, crop, to tensor,
    normalise); forward: `encode_image` on the stacked batch; fingerprint: SHA-256 of the file;
    rest: a serial validation pass (workers=0, activations in memory) minus those, i.e. stacking,
    the cache's collection and the loop's own overhead; decode_fast, preprocess_fast: the first two
    with `--fast-decode`. Each is the median of `repeats` rounds. Also "max_abs_pixel_diff": the
    largest difference between fast and exact preprocessed pixels over the sample.
    """
    import torch

    from steerpatch.validate.activations import compute_activations

    sample = data.subset([item.id for item in data.items[:n]])
    rounds: dict[str, list[float]] = {"decode": [], "preprocess": [], "forward": [], "fingerprint": [], "serial": [],
                                      "decode_fast": [], "preprocess_fast": []}
    max_diff = 0.0
    for _ in range(repeats):
        decode = preprocess = 0.0
        pixels = []
        for item in sample.items:
            t0 = time.perf_counter()
            image = sample.load_image(item)
            t1 = time.perf_counter()
            pixels.append(loaded.preprocess(image))
            decode, preprocess = decode + t1 - t0, preprocess + time.perf_counter() - t1
        decode_fast = preprocess_fast = 0.0
        for item, exact in zip(sample.items, pixels, strict=True):
            t0 = time.perf_counter()
            image = sample.load_image(item, fast_decode=loaded.image_size)
            t1 = time.perf_counter()
            fast = loaded.preprocess(image)
            decode_fast, preprocess_fast = decode_fast + t1 - t0, preprocess_fast + time.perf_counter() - t1
            max_diff = max(max_diff, float((fast - exact).abs().max()))
        start = time.perf_counter()
        with torch.no_grad():
            for s in range(0, len(pixels), batch_size):
                loaded.model.encode_image(torch.stack(pixels[s : s + batch_size]))
        forward = time.perf_counter() - start
        start = time.perf_counter()
        sample.fingerprint()
        fingerprint = time.perf_counter() - start
        start = time.perf_counter()
        compute_activations(loaded, sample, 0, batch_size=batch_size, progress=False, workers=0)
        serial = time.perf_counter() - start
        for name, value in (("decode", decode), ("preprocess", preprocess), ("forward", forward),
                            ("fingerprint", fingerprint), ("serial", serial), ("decode_fast", decode_fast),
                            ("preprocess_fast", preprocess_fast)):
            rounds[name].append(1000 * value / len(sample))
    ms = {name: statistics.median(values) for name, values in rounds.items()}
    ms["rest"] = ms.pop("serial") - ms["decode"] - ms["preprocess"] - ms["forward"]
    ms["max_abs_pixel_diff"] = max_diff
    return ms


# the cheaper decodings compared with the exact one: (JPEG draft factor or None, PIL resize reducing_gap or None)
VARIANTS = {"exact": (None, None), "draft 1x": (1, None), "draft 2x": (2, None), "draft 4x": (4, None),
            "reducing_gap 2": (None, 2.0), "reducing_gap 3": (None, 3.0)}


def decode_variants(loaded, data, *, n: int, repeats: int) -> dict[str, dict[str, float]]:
    """Per variant of `VARIANTS`: ms per image to decode and transform (`steerpatch.pixels`), and the
    largest difference from the exact pixels, over the first n images (median ms of `repeats` rounds).

    "draft Kx" decodes a JPEG at reduced scale, its shorter side kept >= K x the input size (K=DRAFT_FACTOR
    is `--fast-decode`); "reducing_gap G" decodes exactly and lets PIL's resize box-reduce first by an
    integer factor, keeping G x the target before the bicubic pass.
    """
    import numpy as np
    from PIL import Image

    from steerpatch.compile.inputs import preprocessing_of
    from steerpatch.pixels import FILTERS, draft, to_pixels

    spec = preprocessing_of(loaded)
    size, resample = spec.image_size, FILTERS[spec.interpolation]
    items = data.items[:n]

    def read(path, factor, gap):
        with Image.open(path) as image:
            if factor is not None:
                draft(image, size, factor=factor)
            image.load()
            if gap is not None and spec.resize_mode == "shortest":  # to_pixels' target, reached with reducing_gap
                width, height = image.size
                long = int(size * max(width, height) / min(width, height))
                image = image.resize((size, long) if width <= height else (long, size), resample, reducing_gap=gap)
            return to_pixels(image, spec)

    exact = [read(item.path, None, None) for item in items]
    rounds: dict[str, list[float]] = {name: [] for name in VARIANTS}
    diffs: dict[str, float] = {}
    for _ in range(repeats):  # every round times every variant, so a burst of load hits them alike
        for name, (factor, gap) in VARIANTS.items():
            start = time.perf_counter()
            pixels = [read(item.path, factor, gap) for item in items]
            rounds[name].append(1000 * (time.perf_counter() - start) / len(items))
            diffs[name] = max(float(np.abs(p - e).max()) for p, e in zip(pixels, exact, strict=True))
    return {name: {"ms_per_image": statistics.median(rounds[name]), "max_abs_pixel_diff": diffs[name]}
            for name in VARIANTS}


def timings(loaded, sae, data, patch_factory, *, budget_dir: Path, batch_size: int, n_forward: int, repeats: int,
            group_by: str | None) -> dict[str, float]:
    """Throughput and candidate costs on one model, in this process.

    The pure forward pass and the validation pass (fingerprint, streamed decode in threads, forward,
    activations spilled to checksummed shards) alternate `repeats` times, so both see the same load;
    the throughput ratio is the median of the per-repeat ratios. The validation pass runs twice per
    round, exact and with `fast_decode` (their order swapped every round), each into a fresh cache.
    """
    import shutil

    import torch

    from steerpatch.data import iter_image_batches
    from steerpatch.models import build_zero_shot_head
    from steerpatch.validate import ActivationCache, Validator

    head = build_zero_shot_head(loaded, data.classes)
    sample = data.subset([item.id for item in data.items[:n_forward]])
    batches = [b.pixels for b in iter_image_batches(sample, loaded.preprocess, batch_size=batch_size)]

    def forward() -> float:
        start = time.perf_counter()
        with torch.no_grad():
            for pixels in batches:
                head.logits(loaded.model.encode_image(pixels)).softmax(-1)
        return (time.perf_counter() - start) / len(sample)

    forward()  # warm-up
    block = patch_factory(0).hook.block
    per_forward, per_fill, ratios = [], [], []
    per_fast, fast_ratios, fast_entry, exact_entry = [], [], None, None
    for r in range(repeats):
        per_forward.append(forward())
        if r:
            shutil.rmtree(budget_dir / f"fill-{r - 1}")
            shutil.rmtree(budget_dir / f"fast-{r - 1}")
        for fast_decode in (False, True) if r % 2 == 0 else (True, False):
            cache = ActivationCache(budget_dir / f"{'fast' if fast_decode else 'fill'}-{r}", memory_budget=0)  # all to shards
            start = time.perf_counter()
            entry = cache.get(loaded, data, block, batch_size=batch_size, progress=False, fast_decode=fast_decode)
            (per_fast if fast_decode else per_fill).append((time.perf_counter() - start) / len(data))
            if fast_decode:
                fast_entry = entry
            else:
                disk, exact_entry = cache, entry
        ratios.append(per_forward[-1] / per_fill[-1])
        fast_ratios.append(per_forward[-1] / per_fast[-1])
    assert fast_entry is not None and exact_entry is not None and fast_entry.ids == exact_entry.ids
    with torch.no_grad():
        agreement = float((head.logits(fast_entry.features).argmax(-1) == head.logits(exact_entry.features).argmax(-1))
                          .float().mean())
    memory = ActivationCache(budget_dir / f"fill-{repeats - 1}", memory_budget=1 << 40)  # the entry, in memory
    runs = {}
    for name, cache in (("disk", disk), ("memory", memory)):
        validator = Validator(loaded, sae, data, group_by=group_by, cache=cache, batch_size=batch_size, progress=False)
        validator.validate(patch_factory(0), dose=False)  # warm-up (and, for memory, the read from disk)
        seconds = []
        for k in range(1, repeats + 1):
            start = time.perf_counter()
            validator.validate(patch_factory(k), dose=False)
            seconds.append(time.perf_counter() - start)
        runs[name] = statistics.median(seconds) / len(data)
    assert disk.misses == 1 and memory.misses == 0, "candidates must reuse the cached activations"
    fwd = statistics.median(per_forward)
    stages = stage_costs(loaded, data, batch_size=batch_size, n=min(n_forward, 128), repeats=repeats)
    variants = decode_variants(loaded, data, n=min(n_forward, 128), repeats=repeats)
    return {
        "forward_ms_per_image": 1000 * fwd,
        "validation_images_per_s": 1 / statistics.median(per_fill),
        "forward_images_per_s": 1 / fwd,
        "throughput_ratio": statistics.median(ratios),
        "throughput_ratios": ratios,
        "fast_decode_validation_images_per_s": 1 / statistics.median(per_fast),
        "fast_decode_throughput_ratio": statistics.median(fast_ratios),
        "fast_decode_throughput_ratios": fast_ratios,
        "fast_decode_top1_agreement": agreement,
        "stage_ms_per_image": stages,
        "decode_variants": variants,
        "candidate_over_forward_memory": runs["memory"] / fwd,
        "candidate_over_forward_disk": runs["disk"] / fwd,
        "disk_over_memory": runs["disk"] / runs["memory"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10000, help="photos for the large concept-clip run")
    parser.add_argument("--n-small", type=int, default=1000, help="photos for the small concept-clip run")
    parser.add_argument("--n-vit", type=int, default=5000, help="photos for the ViT-B-32 run (0 skips it)")
    parser.add_argument("--n-vit-small", type=int, default=1000,
                        help="photos for the ViT-B-32 peak-memory run it is compared with (0 skips it)")
    parser.add_argument("--cache-memory", default="32MiB", help="--cache-memory of the concept-clip runs")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--n-forward", type=int, default=512, help="images timed for the pure forward pass")
    parser.add_argument("--repeats", type=int, default=3, help="timed candidates and forwards (median)")
    parser.add_argument("--workdir", default=None, help="where to put the photos (default: a temporary folder)")
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--only", choices=("concept-clip", "vit"), default=None, help="run one part only")
    parser.add_argument("--no-rss", action="store_true", help="skip the peak-memory child runs (timings only)")
    args = parser.parse_args(argv)
    for name in ("n", "n_small", "batch_size", "n_forward", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.only != "vit" and (not args.n_small <= args.n or args.n_vit > args.n):
        parser.error("--n-small and --n-vit must not exceed --n")
    if args.n_vit and not 0 <= args.n_vit_small <= args.n_vit:
        parser.error(f"--n-vit-small {args.n_vit_small} must be between 0 (skip) and --n-vit {args.n_vit}")
    if args.json and not Path(args.json).resolve().parent.is_dir():
        parser.error(f"--json {args.json}: its folder does not exist; create it first")

    import torch

    steerpatch = [sys.executable, "-m", "steerpatch.cli.main"]
    results: dict[str, object] = {"n": args.n, "n_small": args.n_small, "n_vit": args.n_vit,
                                  "cache_memory": args.cache_memory, "torch_threads": torch.get_num_threads()}
    with tempfile.TemporaryDirectory(dir=args.workdir, prefix="bench-validate-memory-") as tmp:
        work = Path(tmp)
        start = time.perf_counter()
        n_photos = args.n_vit if args.only == "vit" else args.n
        rows = make_photos(work / "photos", n_photos, max(1, os.cpu_count() or 1))
        small = subset(work / "photos", rows[: args.n_small], work / "small")
        print(f"generated {n_photos} JPEG photos {PHOTO[0]}x{PHOTO[1]} in {time.perf_counter() - start:.0f} s")

        patch = "registry/patches/water-shortcut.json"
        rss = {}
        for label, root in (("small", small), ("large", work / "photos")) if args.only != "vit" and not args.no_rss else ():
            cache = work / f"cache-{label}"
            argv = [*steerpatch, "validate", patch, "--data", str(root), "--group-by", "shortcut", "--quiet",
                    "--cache-dir", str(cache), "--cache-memory", args.cache_memory, "--json"]
            rss[label] = measure_child(argv)
            print(f"concept-clip validate {label:>5}: peak RSS {rss[label][0]:7.0f} MB in {rss[label][1]:.0f} s")
        if rss:
            ratio = rss["large"][0] / rss["small"][0]
            results["concept_clip_rss_mb"] = {"small": rss["small"][0], "large": rss["large"][0], "ratio": ratio}
            print(f"peak RSS {args.n} / {args.n_small} photos: {ratio:.3f} (goal <= 1.1); "
                  f"{rss['large'][0] / 1024:.2f} GB at {args.n} (goal <= 2)")

        from steerpatch.data import load_dataset
        from steerpatch.models import load_model
        from steerpatch.patch import load_patch, new_patch
        from steerpatch.steer import load_patch_sae

        shipped = load_patch(patch)
        loaded = load_model(shipped.model.id)
        sae = load_patch_sae(shipped)

        def concept_patch(k: int):
            return shipped if k == 0 else new_patch(
                f"bench-{k}", loaded, sae, [(e.latent, "scale", 0.1 * k) for e in shipped.edits], rationale="bench",
                author="bench", tokens=shipped.tokens)

        concept = {} if args.only == "vit" else timings(loaded, sae, load_dataset(small), concept_patch, budget_dir=work / "t-concept",
                          batch_size=args.batch_size, n_forward=min(args.n_forward, args.n_small),
                          repeats=args.repeats, group_by="shortcut")
        if concept:
            results["concept_clip"] = concept
            _print("concept-clip", args.n_small, concept)

        if args.n_vit and args.only != "concept-clip":
            from steerpatch.patch import save_patch
            from steerpatch.sae import save_sae

            vit = load_model("ViT-B-32")
            from bench_studio import _random_sae  # the benchmarks' one synthetic ViT-B-32 SAE

            vit_sae = _random_sae(int(vit.model.visual.transformer.width), 16 * 768, 8)
            save_sae(vit_sae, work / "vit-sae")
            vit_root = subset(work / "photos", rows[: args.n_vit], work / "vit")

            def vit_patch(k: int):
                edits = [(7 * k + j, "scale", 0.0) for j in range(8)]
                return new_patch(f"bench-{k}", vit, vit_sae, edits, rationale="bench", author="bench")

            save_patch(vit_patch(0), work / "vit-patch.json")
            argv = [*steerpatch, "validate", str(work / "vit-patch.json"), "--model", "ViT-B-32", "--sae",
                    str(work / "vit-sae"), "--data", str(vit_root), "--quiet", "--no-dose", "--json",
                    "--cache-memory", "0", "--cache-dir", str(work / "cache-vit")]
            vit_rss, vit_s = measure_child(argv) if not args.no_rss else (float("nan"), 0.0)
            print(f"ViT-B-32 validate {args.n_vit} photos, spilled: peak RSS {vit_rss:.0f} MB in {vit_s:.0f} s")
            if args.n_vit_small and not args.no_rss:
                few = subset(work / "photos", rows[: args.n_vit_small], work / "vit-small")
                at = argv.index("--data") + 1
                small_rss, small_s = measure_child([*argv[:at], str(few), *argv[at + 1 : -1], str(work / "cache-vit-small")])
                results["vit_b_32_rss_mb"] = {"small": small_rss, "large": vit_rss, "ratio": vit_rss / small_rss}
                print(f"ViT-B-32 validate {args.n_vit_small} photos: peak RSS {small_rss:.0f} MB in {small_s:.0f} s; "
                      f"{args.n_vit} / {args.n_vit_small}: {vit_rss / small_rss:.3f} (goal <= 1.1)")
            vit_t = timings(vit, vit_sae, load_dataset(vit_root), vit_patch, budget_dir=work / "t-vit",
                            batch_size=args.batch_size, n_forward=min(args.n_forward, args.n_vit),
                            repeats=args.repeats, group_by="shortcut")
            results["vit_b_32"] = {**vit_t, "rss_mb": vit_rss}
            _print("ViT-B-32", args.n_vit, vit_t)
    if args.json:
        from steerpatch.io import atomic_write_text

        atomic_write_text(args.json, json.dumps(results, indent=2) + "\n")
    return 0


def _print(model: str, n: int, t: dict[str, float]) -> None:
    print(f"{model} at {n} photos (batch of the run, torch threads as set):")
    print(f"  pure forward {t['forward_images_per_s']:.1f} img/s, validation pass {t['validation_images_per_s']:.1f} img/s: "
          f"ratio {t['throughput_ratio']:.3f} (goal >= 0.85)")
    st = t["stage_ms_per_image"]
    decode = st["decode"] + st["preprocess"]
    print(f"  ratios per repeat {', '.join(f'{r:.3f}' for r in t['throughput_ratios'])}")
    print(f"  with --fast-decode: validation pass {t['fast_decode_validation_images_per_s']:.1f} img/s: ratio "
          f"{t['fast_decode_throughput_ratio']:.3f} (per repeat {', '.join(f'{r:.3f}' for r in t['fast_decode_throughput_ratios'])}); "
          f"top-1 agreement with exact {t['fast_decode_top1_agreement']:.4f} over {n} photos")
    print(f"  serial ms/image: decode {st['decode']:.1f}, preprocess {st['preprocess']:.1f}, forward {st['forward']:.1f}, "
          f"fingerprint {st['fingerprint']:.2f}, rest {st['rest']:.2f}; fast decode {st['decode_fast']:.1f}, "
          f"preprocess {st['preprocess_fast']:.1f} (largest pixel difference {st['max_abs_pixel_diff']:.4f})")
    print("  decode + transform with steerpatch.pixels, ms/image (largest pixel difference from exact): " + ", ".join(
        f"{name} {v['ms_per_image']:.1f} ({v['max_abs_pixel_diff']:.3f})" for name, v in t["decode_variants"].items()))
    print(f"  decode + preprocess / forward = {decode / st['forward']:.2f}: hiding it needs that many decoding cores "
          f"beside the forward's; with C cores the ratio is at most min(1, (C - 1) x {st['forward'] / decode:.3f})")
    print(f"  one more candidate / one forward: in memory {t['candidate_over_forward_memory']:.3f}, "
          f"on disk {t['candidate_over_forward_disk']:.3f}: disk / memory {t['disk_over_memory']:.3f} (goal <= 1.2)")


if __name__ == "__main__":
    sys.exit(main())
