"""Serving benchmarks, measured side by side in one run and printed as ratios.

P1  ONNX Runtime latency, steered / unsteered graph: random-init ViT-B-32, a standard SAE with 49152
    latents, k=32 edits at block 8, batch 1 and 8. Goal <= 1.02.
P2  ONNX Runtime steered vs torch eager with the engine's hooks, batch 1. Goal >= 1.6x faster.
P3  Load run of `steerpatch serve`: N requests (default 1000) at concurrency 16 over loopback,
    multipart PNG uploads; p50/p99 latency and the error count. Goal 0 errors.

Variants are timed in alternating blocks (a few calls of one, then a few of the next, round after
round), so that all of them see the same machine load over the run. The first call of each block is
not timed: right after a switch it pays for the previous variant's thread pool, which keeps spinning
for a while after its last call (ONNX Runtime's intra-op threads and torch's OpenMP threads both do).
Timed call by call instead, on a 2-core machine, each ONNX Runtime session runs while the other's
threads still spin, which adds ~25 ms to a ~35 ms batch-1 call and says nothing about the graphs.

P1 pools the within-round ratios of several freshly created session pairs: one pair alone carries a
steady offset of a few percent either way from where its memory happened to land. Two measures that
no machine noise moves are printed beside it: the steering module's share of the steered graph's
kernel time in ONNX Runtime's profiler, and the FLOP ratio of the two exported modules.

    python bench/bench_serve.py [--rounds 150] [--pairs 4] [--requests 1000] [--load-model concept-clip] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
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


def alternating_blocks(fns: dict[str, callable], rounds: int, block: int = 5,
                       warmup: int = 2) -> tuple[dict[str, float], list[dict[str, float]]]:
    """Time each function in alternating blocks of `block` calls.

    Each round runs every function `block` times in a row; the first call of a block is untimed
    (it absorbs the switch from the previous function), the other `block - 1` are timed.

    Returns:
        (median seconds per call of each function over the run, the same medians for each round).
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    per_round: list[dict[str, float]] = []
    for _ in range(rounds):
        this_round: dict[str, float] = {}
        for name, fn in fns.items():
            fn()
            block_times = []
            for _ in range(block - 1):
                start = time.perf_counter()
                fn()
                block_times.append(time.perf_counter() - start)
            times[name].extend(block_times)
            this_round[name] = statistics.median(block_times)
        per_round.append(this_round)
    return {name: statistics.median(values) for name, values in times.items()}, per_round


def paired_ratio(per_round: list[dict[str, float]], numerator: str, denominator: str,
                 resamples: int = 2000) -> tuple[float, float, float]:
    """Median over rounds of the within-round ratio, with a bootstrap 95% interval of that median.

    Pairing the two variants round by round cancels the machine's slow drift (other tenants, clock
    changes), which on a small VM moves whole-run medians by a few percent.
    """
    ratios = np.array([r[numerator] / r[denominator] for r in per_round])
    rng = np.random.default_rng(0)
    medians = np.median(rng.choice(ratios, size=(resamples, len(ratios))), axis=1)
    low, high = np.quantile(medians, [0.025, 0.975])
    return float(np.median(ratios)), float(low), float(high)


def flop_ratio(loaded, patch, sae) -> float:
    """Steered / unsteered forward FLOPs of the exported modules (torch's FLOP counter, batch 1)."""
    from torch.utils.flop_counter import FlopCounterMode

    from steerpatch.compile import build_graph

    def flops(module) -> int:
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            module(torch.zeros(1, 3, loaded.image_size, loaded.image_size))
        return counter.get_total_flops()

    plain, *_ = build_graph(loaded)
    steered, *_ = build_graph(loaded, patch, sae)
    return flops(steered) / flops(plain)


def vit_case(folder: Path, d_sae: int = D_SAE, edits: int = K_EDITS, block: int = BLOCK):
    """Random-init ViT-B-32, a seeded random standard SAE (saved in `folder`) and a patch of `edits` suppressions."""
    from steerpatch.models import load_model
    from steerpatch.models.tower import residual_width
    from steerpatch.patch import new_patch

    loaded = load_model("ViT-B-32")
    sae = random_sae(residual_width(loaded), d_sae, folder)
    latents = np.random.default_rng(0).choice(d_sae, size=edits, replace=False)
    patch = new_patch("bench", loaded, sae, [f"{int(i)}:scale:0" for i in latents], rationale="benchmark",
                      author="bench", block=block)
    return loaded, sae, patch


def graphs(workdir: Path):
    """Random-init ViT-B-32, its SAE and patch, and the steered and unsteered graphs (parity-gated), as bytes."""
    from steerpatch.compile import build_graph, compile_patch
    from steerpatch.compile.export import export_graph, serialize

    loaded, sae, patch = vit_case(workdir / "sae")
    result = compile_patch(patch, model=loaded, sae=sae, head="embedding", log=lambda line: print("  " + line))
    plain, *_ = build_graph(loaded)
    unsteered = serialize(export_graph(plain, loaded.image_size, plain.output_names))
    return loaded, sae, patch, result, unsteered


def session_pairs(steered: bytes, unsteered: bytes, n_pairs: int):
    """Fresh (steered, unsteered) session pairs, created in alternating order.

    Where a session's weights and buffers land in memory moves its latency by a few percent on a
    small VM, steady for the session's life; pooling several fresh pairs averages that luck out.
    """
    from steerpatch.compile import create_session

    for index in range(n_pairs):
        if index % 2 == 0:
            pair = {"steered": create_session(steered), "unsteered": create_session(unsteered)}
        else:
            pair = {"unsteered": create_session(unsteered), "steered": create_session(steered)}
        yield pair["steered"], pair["unsteered"]


def steering_share(steered: bytes, workdir: Path, batch: int, runs: int = 10) -> float:
    """Fraction of the steered graph's kernel time spent in the steering module (ONNX Runtime profiler)."""
    from steerpatch.compile.runtime import import_onnxruntime

    ort = import_onnxruntime()
    options = ort.SessionOptions()
    options.enable_profiling = True
    options.profile_file_prefix = str(workdir / f"profile-b{batch}")
    session = ort.InferenceSession(steered, options, providers=["CPUExecutionProvider"])
    size = session.get_inputs()[0].shape[-1]
    pixels = np.random.default_rng(batch).standard_normal((batch, 3, size, size)).astype(np.float32)
    for _ in range(runs):
        session.run(None, {"pixels": pixels})
    events = json.loads(Path(session.end_profiling()).read_text())
    kernels = [e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
    total = sum(e["dur"] for e in kernels)
    steering = sum(e["dur"] for e in kernels if "/steering/" in e["name"])
    return steering / total


def p1_p2(loaded, sae, patch, steered: bytes, unsteered: bytes, rounds: int, n_pairs: int) -> dict:
    """P1 at batch 1 and 8 (`rounds` paired rounds at batch 1, a third at batch 8) and P2 at batch 1."""
    from steerpatch.compile import create_session
    from steerpatch.models import encode_images
    from steerpatch.steer import steer

    out: dict = {}
    size = loaded.image_size
    inputs = {batch: np.random.default_rng(batch).standard_normal((batch, 3, size, size)).astype(np.float32)
              for batch in (1, 8)}
    for batch, n_rounds in ((1, rounds), (8, max(2 * n_pairs, rounds // 3))):
        print(f"  P1 batch {batch}: {n_rounds} rounds over {n_pairs} fresh session pairs")
        medians: dict[str, list[float]] = {"steered": [], "unsteered": []}
        per_round: list[dict[str, float]] = []
        pair_ratios = []
        for steered_session, unsteered_session in session_pairs(steered, unsteered, n_pairs):
            fns = {
                "unsteered": lambda s=unsteered_session, p=inputs[batch]: s.run(None, {"pixels": p}),
                "steered": lambda s=steered_session, p=inputs[batch]: s.run(None, {"pixels": p}),
            }
            pair_medians, pair_rounds = alternating_blocks(fns, rounds=max(2, n_rounds // n_pairs), block=4)
            for name, value in pair_medians.items():
                medians[name].append(value)
            per_round.extend(pair_rounds)
            pair_ratios.append(paired_ratio(pair_rounds, "steered", "unsteered")[0])
        ratio, low, high = paired_ratio(per_round, "steered", "unsteered")
        out[f"batch{batch}"] = {name: round(statistics.median(values) * 1000, 3) for name, values in medians.items()}
        out[f"batch{batch}"].update(
            p1_ratio_steered_over_unsteered=round(ratio, 4), p1_ratio_ci95=[round(low, 4), round(high, 4)],
            p1_ratio_per_pair=[round(r, 4) for r in pair_ratios], rounds=len(per_round), pairs=n_pairs,
        )

    # P2: the hooks stay installed across calls, so only the steered forward pass is timed
    session = create_session(steered)
    tensor = torch.from_numpy(inputs[1])
    threads = torch.get_num_threads()

    def eager(n_threads: int) -> None:
        torch.set_num_threads(n_threads)
        try:
            with torch.no_grad():
                encode_images(loaded, tensor)
        finally:
            torch.set_num_threads(threads)

    fns = {
        "ort_steered": lambda: session.run(None, {"pixels": inputs[1]}),
        "torch_eager_hooks": lambda: eager(threads),
        # on a busy machine one torch thread can beat several; torch gets its better number
        "torch_eager_hooks_1_thread": lambda: eager(1),
    }
    print(f"  P2 batch 1: {max(5, rounds // 8)} rounds")
    with steer(loaded, patch, sae):
        p2_medians, _ = alternating_blocks(fns, rounds=max(5, rounds // 8), block=4)
    out["p2"] = {name: round(value * 1000, 3) for name, value in p2_medians.items()}
    best_torch = min(p2_medians["torch_eager_hooks"], p2_medians["torch_eager_hooks_1_thread"])
    out["p2"]["speedup_ort_over_torch"] = round(best_torch / p2_medians["ort_steered"], 3)
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


def multipart_body(image: bytes, boundary: str) -> bytes:
    """A multipart/form-data body carrying `image` as the PNG file in the field `file`."""
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x.png\"\r\n"
            "Content-Type: image/png\r\n\r\n").encode()
    return head + image + f"\r\n--{boundary}--\r\n".encode()


async def _hammer(url: str, images: list[bytes], n: int, concurrency: int) -> tuple[list[float], int, float]:
    import httpx

    latencies: list[float] = []
    errors = 0
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(n):
        queue.put_nowait(i)

    # the multipart bodies are encoded once: the client shares the 2 cores with the server, and
    # re-encoding every upload would charge the server's throughput for the client's work
    boundary = "steerpatch-bench-boundary"
    headers = {"content-type": f"multipart/form-data; boundary={boundary}"}
    bodies = [multipart_body(image, boundary) for image in images]

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal errors
        while not queue.empty():
            i = queue.get_nowait()
            start = time.perf_counter()
            try:
                response = await client.post("/predict", content=bodies[i % len(bodies)], headers=headers)
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


def positive(text: str) -> int:
    """argparse type: an integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=positive, default=150,
                        help="paired rounds for P1 at batch 1 (a third at batch 8, an eighth for P2)")
    parser.add_argument("--pairs", type=positive, default=4, help="fresh steered/unsteered session pairs for P1")
    parser.add_argument("--requests", type=positive, default=1000)
    parser.add_argument("--concurrency", type=positive, default=16)
    parser.add_argument("--load-model", default="concept-clip", help="model of the graph served in the load run")
    parser.add_argument("--json", dest="json_path", default=None, help="also write the results here")
    args = parser.parse_args(argv)
    if args.json_path and (Path(args.json_path).is_dir() or not Path(args.json_path).parent.is_dir()):
        parser.error(f"--json {args.json_path!r} must name a file in an existing folder, e.g. bench-serve.json")
    import onnxruntime

    results: dict = {"machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                                 "onnxruntime": onnxruntime.__version__, "torch": torch.__version__}}
    with tempfile.TemporaryDirectory(prefix="steerpatch-bench-") as tmp:
        workdir = Path(tmp)
        print(f"P1/P2: random-init ViT-B-32, standard SAE {D_SAE} latents, {K_EDITS} edits at block {BLOCK}")
        loaded, sae, patch, result, unsteered = graphs(workdir)
        results["compile"] = {"mode": result.info.mode, "extra_weights": result.info.extra_weights,
                              "parity_max_abs_diff": result.info.parity_max_abs_diff}
        results["compile"]["flop_ratio_steered_over_unsteered"] = round(flop_ratio(loaded, patch, sae), 5)
        results["compile"]["steering_kernel_share"] = {
            f"batch{batch}": round(steering_share(result.data, workdir, batch), 5) for batch in (1, 8)}
        results.update(p1_p2(loaded, sae, patch, result.data, unsteered, args.rounds, args.pairs))
        path, served, image_size = load_graph(args.load_model, workdir, result.data)
        print(f"P3: load run on {served}: {args.requests} requests at concurrency {args.concurrency}")
        results["load_run"] = {"model": served, **load_run(path, image_size, args.requests, args.concurrency)}

    b1, b8, lr = results["batch1"], results["batch8"], results["load_run"]
    print()
    print("| measure | value | goal |")
    print("|---|---|---|")
    for name, b in (("batch 1", b1), ("batch 8", b8)):
        low, high = b["p1_ratio_ci95"]
        print(f"| P1 steered/unsteered, {name} ({b['steered']:.1f} / {b['unsteered']:.1f} ms; median of "
              f"{b['rounds']} paired rounds over {b['pairs']} session pairs, 95% CI {low:.3f}-{high:.3f}, "
              f"pairs {min(b['p1_ratio_per_pair']):.3f}-{max(b['p1_ratio_per_pair']):.3f}) | "
              f"{b['p1_ratio_steered_over_unsteered']:.4f} | <= 1.02 |")
    share = results["compile"]["steering_kernel_share"]
    print(f"| P1 steering module's share of kernel time (ORT profiler), batch 1 / batch 8 | "
          f"{100 * share['batch1']:.2f}% / {100 * share['batch8']:.2f}% | <= 2% |")
    print(f"| P1 FLOPs steered/unsteered (torch FLOP counter) | "
          f"{results['compile']['flop_ratio_steered_over_unsteered']:.5f} | <= 1.02 |")
    p2 = results["p2"]
    torch_ms = min(p2["torch_eager_hooks"], p2["torch_eager_hooks_1_thread"])
    print(f"| P2 torch eager hooks (best of 1 and {results['machine']['torch_threads']} threads) / ORT steered, "
          f"batch 1 ({torch_ms:.1f} / {p2['ort_steered']:.1f} ms) | {p2['speedup_ort_over_torch']:.2f}x | >= 1.6x |")
    print(f"| P3 load run ({lr['model']}, {lr['requests']} req, concurrency {lr['concurrency']}) | "
          f"p50 {lr['p50_ms']:.1f} ms, p99 {lr['p99_ms']:.1f} ms, {lr['throughput_rps']:.1f} req/s, "
          f"{lr['errors']} errors | 0 errors |")
    if args.json_path:
        from steerpatch.io import atomic_write_text

        atomic_write_text(args.json_path, json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
