"""Serving benchmarks, measured side by side in one run and printed as ratios.

P1  ONNX Runtime latency, steered / unsteered graph: random-init ViT-B-32, a standard SAE with 49152
    latents, k=32 edits at block 8, batch 1 and 8. Goal <= 1.02.
P2  ONNX Runtime steered vs torch eager with the engine's hooks, batch 1. Goal >= 1.6x faster.
P3  Load run of `steerpatch serve`: N requests (default 1000) at concurrency 16 over loopback,
    multipart PNG uploads; p50/p99 latency and the error count. Goal 0 errors.

Steered and unsteered runs are interleaved call by call so that both see the same machine load.

    python bench/bench_serve.py [--repeats 30] [--requests 1000] [--load-model concept-clip] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

D_SAE = 49152
K_EDITS = 32
BLOCK = 8


def random_sae(d_in: int, d_sae: int, folder: Path):
    """A standard SAE with seeded random weights, saved and loaded through the SAELens format."""
    from steerpatch.sae import SAE, SAEConfig, load_sae, save_sae

    generator = torch.Generator().manual_seed(0)
    tensors = {
        "W_enc": torch.randn(d_in, d_sae, generator=generator) / d_in**0.5,
        "b_enc": torch.zeros(d_sae),
        "W_dec": torch.randn(d_sae, d_in, generator=generator) / d_in**0.5,
        "b_dec": torch.zeros(d_in),
    }
    cfg = SAEConfig(d_in=d_in, d_sae=d_sae, architecture="standard", metadata={"block": BLOCK, "token_scope": "all"})
    save_sae(SAE(cfg, tensors), folder)
    return load_sae(folder)


def interleaved(fns: dict[str, callable], repeats: int, warmup: int = 3) -> dict[str, float]:
    """Median seconds per call of each function, calls alternating between them."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def graphs(workdir: Path):
    """Random-init ViT-B-32, its SAE and patch, and the steered and unsteered graphs (parity-gated)."""
    from steerpatch.compile import build_graph, compile_patch, create_session
    from steerpatch.compile.export import export_graph, serialize
    from steerpatch.models import load_model
    from steerpatch.patch import new_patch

    loaded = load_model("ViT-B-32")
    sae = random_sae(loaded.model.visual.transformer.width, D_SAE, workdir / "sae")
    latents = np.random.default_rng(0).choice(D_SAE, size=K_EDITS, replace=False)
    patch = new_patch("bench", loaded, sae, [f"{int(i)}:scale:0" for i in latents], rationale="benchmark",
                      author="bench", block=BLOCK)
    result = compile_patch(patch, model=loaded, sae=sae, head="embedding", log=lambda line: print("  " + line))
    plain, *_ = build_graph(loaded)
    steered = create_session(result.data)
    unsteered = create_session(serialize(export_graph(plain, loaded.image_size, plain.output_names)))
    return loaded, sae, patch, result, steered, unsteered


def p1_p2(loaded, sae, patch, steered, unsteered, repeats: int) -> dict:
    from steerpatch.models import encode_images
    from steerpatch.steer import steer

    out: dict = {}
    for batch in (1, 8):
        pixels = np.random.default_rng(batch).standard_normal((batch, 3, 224, 224)).astype(np.float32)
        fns = {
            "unsteered": lambda p=pixels: unsteered.run(None, {"pixels": p}),
            "steered": lambda p=pixels: steered.run(None, {"pixels": p}),
        }
        with contextlib.ExitStack() as hooks:
            if batch == 1:
                # the hooks stay installed across calls, so only the steered forward pass is timed
                hooks.enter_context(steer(loaded, patch, sae))
                tensor = torch.from_numpy(pixels)

                def eager(t=tensor, threads=torch.get_num_threads()):
                    torch.set_num_threads(threads)
                    with torch.no_grad():
                        encode_images(loaded, t)

                def eager_one_thread(t=tensor, threads=torch.get_num_threads()):
                    # on a busy machine one torch thread can beat several; torch gets its better number
                    torch.set_num_threads(1)
                    try:
                        with torch.no_grad():
                            encode_images(loaded, t)
                    finally:
                        torch.set_num_threads(threads)

                fns["torch_eager_hooks"] = eager
                fns["torch_eager_hooks_1_thread"] = eager_one_thread
            medians = interleaved(fns, repeats if batch == 1 else max(6, repeats // 3))
        out[f"batch{batch}"] = {name: round(value * 1000, 3) for name, value in medians.items()}
        out[f"batch{batch}"]["p1_ratio_steered_over_unsteered"] = round(medians["steered"] / medians["unsteered"], 4)
        if batch == 1:
            best_torch = min(medians["torch_eager_hooks"], medians["torch_eager_hooks_1_thread"])
            out["p2_speedup_ort_over_torch"] = round(best_torch / medians["steered"], 3)
    return out


def load_graph(model_spec: str, workdir: Path, vit_graph: bytes) -> tuple[Path, str, int]:
    """A compiled graph to serve: (file, model, image size); ViT-B-32's P1 graph when the model is missing."""
    from steerpatch.compile import compile_patch
    from steerpatch.errors import SteerpatchError
    from steerpatch.models import load_model
    from steerpatch.patch import new_patch

    try:
        loaded = load_model(model_spec)
    except SteerpatchError as error:
        print(f"  {model_spec} is not available ({error}); the load run uses the ViT-B-32 graph")
        path = workdir / "vit.onnx"
        path.write_bytes(vit_graph)
        return path, "ViT-B-32", 224
    from steerpatch.sae import default_sae_path, load_sae

    sae = load_sae(default_sae_path()) if model_spec == "concept-clip" else random_sae(
        loaded.model.visual.transformer.width, 4096, workdir / "load-sae")
    patch = new_patch("bench-load", loaded, sae, ["0:scale:0", "1:scale:0"], rationale="benchmark", author="bench")
    path = workdir / "load.onnx"
    compile_patch(patch, model=loaded, sae=sae, out=path)
    return path, model_spec, loaded.image_size


def png_bytes(size: int, seed: int) -> bytes:
    from PIL import Image

    pixels = (np.random.default_rng(seed).random((size, size, 3)) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


async def _hammer(url: str, images: list[bytes], n: int, concurrency: int) -> tuple[list[float], int, float]:
    import httpx

    latencies: list[float] = []
    errors = 0
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(n):
        queue.put_nowait(i)

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal errors
        while not queue.empty():
            i = queue.get_nowait()
            start = time.perf_counter()
            try:
                response = await client.post("/predict", files={"file": ("x.png", images[i % len(images)], "image/png")})
                if response.status_code != 200:
                    errors += 1
            except httpx.HTTPError:
                errors += 1
            latencies.append(time.perf_counter() - start)

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        started = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        wall = time.perf_counter() - started
    return latencies, errors, wall


def load_run(graph: Path, image_size: int, n: int, concurrency: int) -> dict:
    """Start `steerpatch serve` in a subprocess and send it `n` uploads at `concurrency`."""
    import httpx

    from steerpatch.serve import free_port

    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "steerpatch.cli.main", "serve", str(graph), "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:
        for line in server.stderr:  # the server says when it listens
            if "Uvicorn running" in line or "Application startup complete" in line:
                break
        else:
            raise RuntimeError(f"the server exited with code {server.wait()}")
        url = f"http://127.0.0.1:{port}"
        assert httpx.get(url + "/health").status_code == 200
        images = [png_bytes(image_size, seed) for seed in range(32)]
        latencies, errors, wall = asyncio.run(_hammer(url, images, n, concurrency))
    finally:
        server.terminate()
        server.wait(timeout=30)
    ordered = sorted(latencies)
    return {
        "requests": n,
        "concurrency": concurrency,
        "errors": errors,
        "p50_ms": round(1000 * ordered[len(ordered) // 2], 2),
        "p99_ms": round(1000 * ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 2),
        "throughput_rps": round(n / wall, 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30, help="timed calls per variant at batch 1")
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--load-model", default="concept-clip", help="model of the graph served in the load run")
    parser.add_argument("--json", dest="json_path", default=None, help="also write the results here")
    args = parser.parse_args(argv)
    import onnxruntime

    results: dict = {"machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                                 "onnxruntime": onnxruntime.__version__, "torch": torch.__version__}}
    with tempfile.TemporaryDirectory(prefix="steerpatch-bench-") as tmp:
        workdir = Path(tmp)
        print(f"P1/P2: random-init ViT-B-32, standard SAE {D_SAE} latents, {K_EDITS} edits at block {BLOCK}")
        loaded, sae, patch, result, steered, unsteered = graphs(workdir)
        results["compile"] = {"mode": result.info.mode, "extra_weights": result.info.extra_weights,
                              "parity_max_abs_diff": result.info.parity_max_abs_diff}
        results.update(p1_p2(loaded, sae, patch, steered, unsteered, args.repeats))
        del steered, unsteered
        path, served, image_size = load_graph(args.load_model, workdir, result.data)
        print(f"P3: load run on {served}: {args.requests} requests at concurrency {args.concurrency}")
        results["load_run"] = {"model": served, **load_run(path, image_size, args.requests, args.concurrency)}

    b1, b8, lr = results["batch1"], results["batch8"], results["load_run"]
    print()
    print("| measure | value | goal |")
    print("|---|---|---|")
    print(f"| P1 steered/unsteered, batch 1 ({b1['steered']:.1f} / {b1['unsteered']:.1f} ms) | "
          f"{b1['p1_ratio_steered_over_unsteered']:.4f} | <= 1.02 |")
    print(f"| P1 steered/unsteered, batch 8 ({b8['steered']:.1f} / {b8['unsteered']:.1f} ms) | "
          f"{b8['p1_ratio_steered_over_unsteered']:.4f} | <= 1.02 |")
    torch_ms = min(b1["torch_eager_hooks"], b1["torch_eager_hooks_1_thread"])
    print(f"| P2 torch eager hooks (best of 1 and {results['machine']['torch_threads']} threads) / ORT steered, "
          f"batch 1 ({torch_ms:.1f} / {b1['steered']:.1f} ms) | "
          f"{results['p2_speedup_ort_over_torch']:.2f}x | >= 1.6x |")
    print(f"| P3 load run ({lr['model']}, {lr['requests']} req, concurrency {lr['concurrency']}) | "
          f"p50 {lr['p50_ms']:.1f} ms, p99 {lr['p99_ms']:.1f} ms, {lr['throughput_rps']:.1f} req/s, "
          f"{lr['errors']} errors | 0 errors |")
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
