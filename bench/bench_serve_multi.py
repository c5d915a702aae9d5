"""Serving benchmarks for platform teams, measured side by side in one run and printed as ratios.

M1  A graph holding 8 patches serving a batch of 8 rows that mixes them / a single-patch graph, batch 8.
    Goal <= 1.03.
M2  Dynamic batching on / off: N requests (default 1000) at concurrency 16 on loopback against
    `steerpatch serve` (multipart PNGs). Goal: throughput ratio >= 1.5, p99 not higher, 0 errors. Also
    the served graph's images per second at batch 1, 4 and 16 on 1 and 2 threads (the ceiling of
    what batching can gain here). `--m2-model ViT-B-32` serves random-init ViT-B-32 instead.
M3  Shadow on / off: the same load with `--shadow`; latency ratio reported.
M4  Optimised steered graph vs torch eager with hooks, batch 1 (goal >= 2.5x); optimised vs
    unoptimised graph; int8 vs fp32 graph with their top-1 agreement.

The model is the embedded default (concept-clip) with its SAE, so every number comes from real
weights; variants alternate in blocks as in `bench_serve.py` (its helpers are reused).

    python bench/bench_serve_multi.py [--rounds 60] [--requests 1000] [--concurrency 16] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from bench_serve import _hammer, alternating_blocks, paired_ratio, png_bytes, positive, vit_case

N_PATCHES = 8


def make_patches(loaded, sae, n: int) -> list:
    """`n` distinct patches on the default SAE's block: each suppresses or scales its own latents."""
    from steerpatch.patch import new_patch

    return [
        new_patch(f"bench-multi-{i}", loaded, sae, [f"{10 * i + j}:scale:{0.0 if i % 2 else 2.0}" for j in range(4)],
                  rationale="benchmark", author="bench", tokens=sae.hook.tokens)
        for i in range(n)
    ]


def m1(loaded, sae, patches, workdir: Path, rounds: int) -> tuple[dict, Path, Path]:
    from steerpatch.compile import compile_patch, create_session

    single = compile_patch(patches[0], model=loaded, sae=sae, out=workdir / "single.onnx", progress=False)
    multi = compile_patch(patches, model=loaded, sae=sae, out=workdir / "multi.onnx", progress=False)
    size = loaded.image_size
    pixels = np.random.default_rng(8).standard_normal((8, 3, size, size)).astype(np.float32)
    index = np.arange(1, 9, dtype=np.int64)  # every row its own patch
    s_single, s_multi = create_session(single.path), create_session(multi.path)
    fns = {
        "single": lambda: s_single.run(None, {"pixels": pixels}),
        "multi": lambda: s_multi.run(None, {"pixels": pixels, "patch_index": index}),
    }
    medians, per_round = alternating_blocks(fns, rounds=rounds, block=4)
    ratio, low, high = paired_ratio(per_round, "multi", "single")
    return {"single_ms": round(1000 * medians["single"], 2), "multi_ms": round(1000 * medians["multi"], 2),
            "ratio": round(ratio, 4), "ci95": [round(low, 4), round(high, 4)], "goal": "<= 1.03",
            "multi_parity_max_abs_diff": multi.info.parity_max_abs_diff}, single.path, workdir / "multi.onnx"


def serve_run(args: list[str], image_size: int, n: int, concurrency: int) -> dict:
    """Start `steerpatch serve ARGS` in a subprocess and send it `n` PNG uploads at `concurrency`."""
    import httpx

    from steerpatch.serve import free_port

    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "steerpatch.cli.main", "serve", *args, "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        for line in server.stderr:
            if "Application startup complete" in line or "Uvicorn running" in line:
                break
        else:
            raise RuntimeError(f"the server exited with code {server.wait()}")
        url = f"http://127.0.0.1:{port}"
        images = [png_bytes(image_size, seed) for seed in range(32)]
        asyncio.run(_hammer(url, images, min(n, 32), concurrency))  # warm-up, not counted
        latencies, errors, wall = asyncio.run(_hammer(url, images, n, concurrency))
        metrics = httpx.get(url + "/metrics", timeout=30).text
    finally:
        server.terminate()
        server.wait(timeout=30)
    ordered = sorted(latencies)
    batches = [line for line in metrics.splitlines() if line.startswith("steerpatch_batch_rows_count")]
    return {
        "requests": n, "errors": errors,
        "p50_ms": round(1000 * ordered[len(ordered) // 2], 2),
        "p99_ms": round(1000 * ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 2),
        "throughput_rps": round(n / wall, 2),
        "ort_calls": float(batches[0].split()[-1]) if batches else None,
    }


def batch_gain(graph: Path, image_size: int, rows: int = 16) -> dict:
    """Images per second of one session at batch 1, 4 and `rows`, on 1 and 2 intra-op threads.

    The most dynamic batching can gain on this machine is ONNX Runtime's own gain from larger batches,
    whatever the HTTP side costs.
    """
    from steerpatch.compile import create_session

    pixels = np.random.default_rng(2).standard_normal((rows, 3, image_size, image_size)).astype(np.float32)
    out: dict = {}
    for threads in (1, 2):
        session = create_session(graph, threads=threads)
        session.run(None, {"pixels": pixels[:2]})  # warm-up
        for batch in (1, 4, rows):
            start = time.perf_counter()
            for s in range(0, rows, batch):
                session.run(None, {"pixels": pixels[s : s + batch]})
            out[f"threads {threads} batch {batch}"] = round(rows / (time.perf_counter() - start), 2)
    return out


def alternate(variants: dict[str, list[str]], image_size: int, load: tuple[int, int], repeats: int,
              numerator: str, denominator: str) -> dict:
    """Serve-and-load runs of each variant, alternating `repeats` times; medians and the median paired ratios."""
    runs: dict[str, list[dict]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, args in variants.items():
            runs[name].append(serve_run(args, image_size, *load))
    pairs = list(zip(runs[numerator], runs[denominator], strict=True))

    def median(values: list[float]) -> float:
        return round(float(np.median(values)), 3)

    return {
        **{name: {key: median([r[key] for r in rs]) for key in ("throughput_rps", "p50_ms", "p99_ms", "ort_calls")}
           for name, rs in runs.items()},
        "errors": {name: sum(r["errors"] for r in rs) for name, rs in runs.items()},
        "throughput_ratio": median([a["throughput_rps"] / b["throughput_rps"] for a, b in pairs]),
        "p50_ratio": median([a["p50_ms"] / b["p50_ms"] for a, b in pairs]),
        "p99_ratio": median([a["p99_ms"] / b["p99_ms"] for a, b in pairs]),
        "runs": runs,
    }


def m4(loaded, sae, patch, workdir: Path, rounds: int, head: str | None = None) -> dict:
    from steerpatch.compile import compile_patch, create_session
    from steerpatch.compile.optimize import quantize_graph, top1_agreement
    from steerpatch.compile.parity import onnx_outputs, parity_inputs
    from steerpatch.models import encode_images
    from steerpatch.steer import steer

    options = {} if head is None else {"head": head}
    plain = compile_patch(patch, model=loaded, sae=sae, progress=False, **options)
    optimized = compile_patch(patch, model=loaded, sae=sae, optimize=True, progress=False, **options)
    int8 = quantize_graph(plain.data)  # the quantiser cannot read the optimiser's fused ops
    size = loaded.image_size
    one = np.random.default_rng(1).standard_normal((1, 3, size, size)).astype(np.float32)
    sessions = {"plain": create_session(plain.data), "optimized": create_session(optimized.data),
                "int8": create_session(int8)}
    torch_one = torch.from_numpy(one)

    def eager() -> None:
        with torch.no_grad():
            encode_images(loaded, torch_one)

    fns = {"torch": eager, **{name: (lambda s=s: s.run(None, {"pixels": one})) for name, s in sessions.items()}}
    # the hooks stay installed across calls (as a torch server would keep them): only forward passes are timed
    with steer(loaded, patch, sae):
        medians, per_round = alternating_blocks(fns, rounds=rounds, block=4)
    agreement, source, n_inputs = None, "not measured: an embedding head has no top-1 class", 0
    if head in (None, "zero-shot"):
        pixels, source = parity_inputs(loaded, None, 256)
        n_inputs = len(pixels)
        agreement = top1_agreement(onnx_outputs(sessions["plain"], pixels), onnx_outputs(sessions["int8"], pixels))
    return {
        "ms": {name: round(1000 * value, 3) for name, value in medians.items()},
        "torch_over_optimized": round(paired_ratio(per_round, "torch", "optimized")[0], 3),
        "unoptimized_over_optimized": round(paired_ratio(per_round, "plain", "optimized")[0], 3),
        "fp32_over_int8": round(paired_ratio(per_round, "plain", "int8")[0], 3),
        "fusions": optimized.info.fusions,
        "int8_top1_agreement": None if agreement is None else round(agreement, 4),
        "agreement_inputs": f"{n_inputs} {source}",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=positive, default=60)
    parser.add_argument("--requests", type=positive, default=1000)
    parser.add_argument("--concurrency", type=positive, default=16)
    parser.add_argument("--batch-wait-ms", type=float, default=2.0)
    parser.add_argument("--repeats", type=positive, default=3,
                        help="M2/M3: off and on runs alternate this many times; medians are reported")
    parser.add_argument("--only", default="m1,m2,m3,m4", help="comma-separated parts to run, e.g. m2,m4")
    parser.add_argument("--json", dest="json_path", default=None)
    parser.add_argument("--m4-model", choices=("concept-clip", "ViT-B-32"), default="concept-clip",
                        help="M4's model: the default's patch, or random-init ViT-B-32 with a 4,096-latent SAE "
                             "and 32 edits at block 8 (embedding head)")
    parser.add_argument("--m2-model", choices=("concept-clip", "ViT-B-32"), default="concept-clip",
                        help="M2's model: the default's patch (PNG uploads of 64 px), or random-init ViT-B-32 with "
                             "M4's SAE and patch (224 px uploads, embedding head), where the graph's work dominates")
    args = parser.parse_args(argv)
    parts = set(args.only.split(","))
    torch.set_num_threads(1)
    from steerpatch.compile import compile_patch
    from steerpatch.models import load_model
    from steerpatch.sae import default_sae_path, load_sae

    loaded = load_model("concept-clip")
    sae = load_sae(default_sae_path())
    patches = make_patches(loaded, sae, N_PATCHES)
    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="bench-serve-multi-") as folder:
        workdir = Path(folder)
        started = time.perf_counter()
        if "m1" in parts:
            print(f"M1: {N_PATCHES}-patch graph, mixed batch 8 / single-patch graph, batch 8")
            results["m1"], single, _multi = m1(loaded, sae, patches, workdir, args.rounds)
            print(f"  {results['m1']}")
        else:
            single = compile_patch(patches[0], model=loaded, sae=sae, out=workdir / "single.onnx", progress=False).path
        second = workdir / "second.onnx"
        compile_patch(patches[1], model=loaded, sae=sae, out=second, progress=False)
        load = (args.requests, args.concurrency)
        if "m2" in parts:
            print(f"M2: dynamic batching on / off, {args.requests} requests at concurrency {args.concurrency}, "
                  f"{args.repeats} alternating repeats ({args.m2_model})")
            served, size = single, loaded.image_size
            if args.m2_model == "ViT-B-32":
                vit, vit_sae, vit_patch = vit_case(workdir / "vit-sae", d_sae=4096)
                served, size = workdir / "vit.onnx", vit.image_size
                compile_patch(vit_patch, model=vit, sae=vit_sae, head="embedding", out=served, progress=False)
            results["m2"] = {**alternate({"off": [str(served), "--no-batching"],
                                          "on": [str(served), "--batch-wait-ms", str(args.batch_wait_ms)]},
                                         size, load, args.repeats, "on", "off"),
                             "model": args.m2_model, "goal": ">= 1.5, p99 not higher, 0 errors",
                             "ort_images_per_s": batch_gain(served, size)}
            print(f"  {results['m2']}")
        if "m3" in parts:
            print("M3: shadow on / off (batching on)")
            aliases = ["tiny", "--alias", f"production={single}", "--alias", f"candidate={second}",
                       "--batch-wait-ms", str(args.batch_wait_ms)]
            results["m3"] = alternate({"off": aliases, "on": [*aliases, "--shadow", "candidate"]},
                                      loaded.image_size, load, args.repeats, "on", "off")
            print(f"  {results['m3']}")
        if "m4" in parts:
            print(f"M4: optimised graph vs torch eager (batch 1), vs unoptimised, int8 vs fp32 ({args.m4_model})")
            if args.m4_model == "ViT-B-32":
                results["m4"] = m4(*vit_case(workdir / "vit-sae", d_sae=4096), workdir, args.rounds, head="embedding")
            else:
                results["m4"] = m4(loaded, sae, patches[0], workdir, args.rounds)
            print(f"  {results['m4']}")
        results["seconds"] = round(time.perf_counter() - started, 1)
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
