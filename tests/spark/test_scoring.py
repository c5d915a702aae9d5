"""Batch scoring: the same results from the local engine and from Spark executors."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from steerpatch.errors import CompileError, OutputError
from steerpatch.spark import load_scoring_graph, score_local, score_spark
from steerpatch.spark.runner import Preprocess, preprocess_image
from steerpatch.spark.sources import list_folder


def test_preprocessing_matches_open_clip(image_folder):
    import torch
    from open_clip.transform import image_transform

    transform = image_transform(32, is_train=False)
    spec = Preprocess(image_size=32)
    for item_id, _, _, path in list_folder(image_folder)[:6]:
        if item_id.endswith("broken.png"):
            continue
        data = path.read_bytes()
        expected = transform(Image.open(io.BytesIO(data))).numpy()
        assert isinstance(expected, np.ndarray) and torch.is_tensor(torch.from_numpy(expected))
        np.testing.assert_allclose(preprocess_image(data, spec), expected, atol=1e-6)


def test_graph_metadata_is_read(tiny_graph):
    graph = load_scoring_graph(tiny_graph)
    assert graph.classes == ["circle", "square", "star"]
    assert graph.preprocess.image_size == 32
    assert graph.has_head and graph.outputs == ["embedding", "logits", "probs"]


def test_a_missing_graph_is_a_clear_error(tmp_path):
    with pytest.raises(CompileError, match="does not exist"):
        load_scoring_graph(tmp_path / "none.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"junk")
    with pytest.raises(CompileError, match="not a loadable ONNX graph"):
        load_scoring_graph(tmp_path / "junk.onnx")


@pytest.fixture(scope="module")
def scored(spark, tiny_graph, image_folder, tmp_path_factory):
    """The folder scored by both engines (with embeddings), read back sorted by id."""
    out = tmp_path_factory.mktemp("scores")
    graph = load_scoring_graph(tiny_graph)
    local = score_local(graph, image_folder, out / "local.parquet", embedding=True, batch_size=8, progress=False)
    remote = score_spark(spark, graph, image_folder, out / "spark.parquet", embedding=True, batch_size=8,
                         partitions=3, progress=False)
    read = {name: pd.read_parquet(out / f"{name}.parquet").sort_values("id", ignore_index=True)
            for name in ("local", "spark")}
    return local, remote, read, out


def test_engines_agree(scored):
    local, remote, read, _ = scored
    assert (local.n, local.n_errors) == (remote.n, remote.n_errors) == (31, 1)
    a, b = read["local"], read["spark"]
    assert list(a.columns) == list(b.columns)
    assert list(a["id"]) == list(b["id"])
    assert a["pred"].fillna("-").tolist() == b["pred"].fillna("-").tolist()
    ok = a["error"].isna()
    np.testing.assert_allclose(np.stack(a["probs"][ok]), np.stack(b["probs"][ok]), atol=1e-6)
    np.testing.assert_allclose(np.stack(a["embedding"][ok]), np.stack(b["embedding"][ok]), atol=1e-5)


def test_results_are_what_the_graph_says(scored, tiny_graph, image_folder):
    """One image's row equals a direct ONNX Runtime run on open_clip-preprocessed pixels."""
    import onnxruntime as ort
    from open_clip.transform import image_transform

    row = scored[2]["spark"].set_index("id").loc["square/004.png"]
    pixels = image_transform(32, is_train=False)(Image.open(image_folder / "square/004.png"))[None].numpy()
    session = ort.InferenceSession(str(tiny_graph), providers=["CPUExecutionProvider"])
    probs = session.run(["probs"], {"pixels": pixels})[0][0]
    np.testing.assert_allclose(row["probs"], probs, atol=1e-6)
    assert row["pred"] == ["circle", "square", "star"][int(np.argmax(probs))]
    assert row["pred_index"] == int(np.argmax(probs))
    assert row["confidence"] == pytest.approx(float(probs.max()), abs=1e-6)
    assert row["label"] == "square" and '"parity": "even"' in row["attributes"]


def test_undecodable_images_are_reported_not_fatal(scored):
    for frame in scored[2].values():
        broken = frame.set_index("id").loc["star/broken.png"]
        assert "not a decodable image" in broken["error"]
        assert pd.isna(broken["pred"]) and broken["probs"] is None


def test_outputs_are_never_overwritten(scored, spark, tiny_graph, image_folder):
    _, _, _, out = scored
    graph = load_scoring_graph(tiny_graph)
    with pytest.raises(OutputError, match="already exists"):
        score_local(graph, image_folder, out / "local.parquet", progress=False)
    with pytest.raises(OutputError, match="already exists"):
        score_spark(spark, graph, image_folder, out / "spark.parquet", progress=False)
    # no temporary siblings are left behind by finished runs
    assert sorted(p.name for p in out.iterdir()) == ["local.parquet", "spark.parquet"]


def test_cli_scores_a_parquet_of_image_bytes(runner, scored, tiny_graph, image_folder, tmp_path):
    from steerpatch.cli.main import cli
    from steerpatch.spark.sources import iter_local_batches

    source = tmp_path / "images.parquet"
    pd.concat(list(iter_local_batches(image_folder)), ignore_index=True).to_parquet(source)
    result = runner.invoke(cli, ["score", str(tiny_graph), "--data", str(source), "--engine", "spark",
                                 "--spark-master", "local[2]", "--out", str(tmp_path / "s.parquet"), "--json"])
    assert result.exit_code == 0, result.output
    summary = __import__("json").loads(result.output[result.output.index("{"):])
    assert summary["engine"] == "spark" and summary["n"] == 31 and summary["n_errors"] == 1
    again = pd.read_parquet(tmp_path / "s.parquet").sort_values("id", ignore_index=True)
    assert "embedding" not in again.columns
    assert again["pred"].fillna("-").tolist() == scored[2]["local"]["pred"].fillna("-").tolist()


def test_cli_local_engine_and_bad_input(runner, tiny_graph, image_folder, tmp_path):
    from steerpatch.cli.main import cli

    out = tmp_path / "l.parquet"
    result = runner.invoke(cli, ["score", str(tiny_graph), "--data", str(image_folder), "--embedding", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "scored 31 images (1 undecodable) with local" in result.output
    assert len(pd.read_parquet(out)["embedding"].dropna().iloc[0]) == 32
    result = runner.invoke(cli, ["score", str(tiny_graph), "--data", str(image_folder), "--out", str(out)])
    assert result.exit_code == 2 and "already exists" in result.output
    result = runner.invoke(cli, ["score", str(tiny_graph), "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x.parquet")])
    assert result.exit_code == 2 and "does not exist" in result.output
    result = runner.invoke(cli, ["score", str(tiny_graph), "--data", str(image_folder), "--spark-master", "local[2]",
                                 "--out", str(tmp_path / "y.parquet")])
    assert result.exit_code == 2 and "needs --engine spark" in result.output
