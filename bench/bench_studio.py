"""Round trip of one slider move in the studio: POST /api/steer over HTTP until the new prediction is back.

Setup per model: the studio app served by uvicorn on 127.0.0.1 (in a thread), one instance already
inspected (its hook activations cached), and an HTTP keep-alive client that moves a scale slider of
one latent through changing values. Each request builds the draft patch, applies it to the cached
activations, runs the blocks after the hook and the zero-shot head, and returns the JSON prediction.

Models:
  - concept-clip (the embedded default) with its shipped SAE;
  - random-init open_clip ViT-B-32 (12 blocks, 224 px) with a random standard SAE of 16 x 768 latents
    hooked at block 8.

Run:
    .venv/bin/python bench/bench_studio.py [--moves 60] [--threads 2] [--models concept-clip,ViT-B-32]

Goal: p50 <= 50 ms (concept-clip) and <= 150 ms (ViT-B-32) on 2 cores.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

GOALS_MS = {"concept-clip": 50.0, "ViT-B-32": 150.0}


def _random_sae(d_in: int, d_sae: int, block: int):
    import torch

    from steerpatch.sae import SAE, SAEConfig
    from steerpatch.sae.config import hook_metadata

    gen = torch.Generator().manual_seed(0)
    w_dec = torch.randn(d_sae, d_in, generator=gen)
    w_dec = w_dec / w_dec.norm(dim=-1, keepdim=True)
    tensors = {"W_enc": w_dec.T.contiguous(), "b_enc": torch.full((d_sae,), -0.5), "W_dec": w_dec, "b_dec": torch.zeros(d_in)}
    cfg = SAEConfig(d_in=d_in, d_sae=d_sae, architecture="standard", metadata=hook_metadata(block, "all"))
    return SAE(cfg, tensors)


def measure(bench, moves: int) -> list[float]:
    """Milliseconds per slider move, over HTTP, after a short warm-up."""
    import socket

    import httpx

    from steerpatch.studio import serve_in_thread

    # browsers send small requests with Nagle's algorithm off; so does this client
    transport = httpx.HTTPTransport(socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)])
    studio = serve_in_thread(bench)
    try:
        with httpx.Client(base_url=studio.url, timeout=60, transport=transport,
                          headers={"x-steerpatch-token": studio.token}) as client:
            key = client.get("/api/items", params={"limit": 1}).json()["items"][0]["key"]
            latent = client.get(f"/api/attribution/{key}", params={"n": 1}).json()["latents"][0]["latent"]
            times = []
            for step in range(moves + 5):
                value = round((step % 20) / 10, 2)  # the slider sweeps 0.0 .. 1.9
                body = {"key": key, "edits": [{"latent": latent, "op": "scale", "value": value}]}
                start = time.perf_counter()
                response = client.post("/api/steer", json=body)
                response.json()
                elapsed = (time.perf_counter() - start) * 1000
                response.raise_for_status()
                if step >= 5:
                    times.append(elapsed)
    finally:
        studio.stop()
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--moves", type=int, default=60, help="timed slider moves per model")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (cores)")
    parser.add_argument("--n", type=int, default=48, help="images in the browsed world")
    parser.add_argument("--models", default="concept-clip,ViT-B-32", help="comma-separated subset of the setups")
    args = parser.parse_args(argv)

    import torch

    from steerpatch.data import load_dataset
    from steerpatch.models import load_model
    from steerpatch.sae import default_sae_path, load_sae
    from steerpatch.studio import Workbench
    from steerpatch.world import write_world

    torch.set_num_threads(args.threads)
    failed = False
    with tempfile.TemporaryDirectory(prefix="bench-studio-") as tmp:
        world = write_world(Path(tmp) / "world", split="test", n=args.n, seed=0)
        dataset = load_dataset(world)
        setups = {
            "concept-clip": lambda: (load_model("concept-clip"), load_sae(default_sae_path())),
            "ViT-B-32": lambda: (load_model("ViT-B-32"), _random_sae(768, 16 * 768, 8)),
        }
        print(f"slider round trip over HTTP, {args.moves} moves, torch threads={args.threads}")
        for name in args.models.split(","):
            if name not in setups:
                parser.error(f"unknown setup {name!r}; use {', '.join(setups)}")
            loaded, sae = setups[name]()
            bench = Workbench(loaded, sae, dataset, patch_dir=Path(tmp) / "patches")
            times = measure(bench, args.moves)
            p50 = statistics.median(times)
            p90 = statistics.quantiles(times, n=10)[-1]
            ok = p50 <= GOALS_MS[name]
            failed |= not ok
            print(
                f"{name:13s} p50 {p50:6.1f} ms  p90 {p90:6.1f} ms  min {min(times):6.1f} ms  "
                f"goal p50 <= {GOALS_MS[name]:.0f} ms: {'met' if ok else 'MISSED'}"
            )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
