"""The serving benchmark's measuring helpers, on the tiny compiled graph (the benchmark itself runs in `nox -s bench`)."""

from __future__ import annotations

import bench_serve
import pytest


def test_alternating_blocks_times_all_but_the_first_call_of_each_block():
    calls = {"a": 0, "b": 0}

    def counter(name):
        def call():
            calls[name] += 1
        return call

    medians, per_round = bench_serve.alternating_blocks({"a": counter("a"), "b": counter("b")},
                                                        rounds=3, block=4, warmup=2)
    assert calls == {"a": 2 + 3 * 4, "b": 2 + 3 * 4}
    assert len(per_round) == 3 and all(set(r) == {"a", "b"} for r in per_round)
    assert set(medians) == {"a", "b"} and all(value >= 0 for value in medians.values())


def test_paired_ratio_is_the_median_within_round_ratio():
    rounds = [{"s": 2.0 * t, "u": t} for t in (1.0, 5.0, 9.0)] + [{"s": 3.0, "u": 1.0}]
    ratio, low, high = bench_serve.paired_ratio(rounds, "s", "u")
    # whole-run medians would give 5.0 / 3.0; pairing by round gives the true 2.0
    assert ratio == pytest.approx(2.0)
    assert 2.0 <= low <= ratio <= high <= 3.0


def test_steering_share_finds_the_steering_module_only_in_the_steered_graph(compiled, tiny, workdir):
    from steerpatch.compile import build_graph
    from steerpatch.compile.export import export_graph, serialize

    _, result = compiled
    share = bench_serve.steering_share(result.data, workdir, batch=1, runs=2)
    assert 0.0 < share < 1.0
    plain, *_ = build_graph(tiny)
    plain_graph = serialize(export_graph(plain, tiny.image_size, plain.output_names))
    assert bench_serve.steering_share(plain_graph, workdir, batch=1, runs=2) == 0.0


def test_flop_ratio_counts_the_steering_module(compiled, tiny, saes):
    patch, _ = compiled
    ratio = bench_serve.flop_ratio(tiny, patch, saes["standard"])
    assert 1.0 < ratio < 1.5
