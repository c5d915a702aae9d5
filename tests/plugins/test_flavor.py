"""The `steerpatch` MLflow flavor: save/log/load, pickle-free pyfunc predicting with the patch applied."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys

import mlflow_steerpatch
import numpy as np
import pytest

from steerpatch.errors import IntegrityError, RegistryError


@pytest.fixture(scope="module")
def saved(vit_patch, tmp_path_factory):
    path = tmp_path_factory.mktemp("flavor") / "model"
    mlflow_steerpatch.save_model(str(vit_patch.patch), path, report=str(vit_patch.report))
    return path


def test_save_model_writes_the_flavor_and_no_pickle(saved, vit_patch, classes):
    mlmodel = (saved / "MLmodel").read_text()
    assert "steerpatch:" in mlmodel and "loader_module: mlflow_steerpatch" in mlmodel
    files = [p.name for p in saved.rglob("*") if p.is_file()]
    assert not any(name.endswith((".pkl", ".pickle", ".cloudpickle")) for name in files)
    native = mlflow_steerpatch.load_model(str(saved))
    assert native.patch.content_hash == vit_patch.patch_obj.content_hash
    assert native.classes == classes and native.report.verdict == "pass"


def test_pyfunc_predict_applies_the_patch(saved, small_clip, make_png, classes):
    import torch

    from steerpatch.models import build_zero_shot_head, encode_images, preprocess_batch
    from steerpatch.patch import load_patch
    from steerpatch.sae import load_sae
    from steerpatch.steer import steer

    code = f"""
import json, sys, base64
import pandas as pd, mlflow.pyfunc
model = mlflow.pyfunc.load_model({str(saved)!r})
images = [base64.b64decode(s) for s in json.loads(sys.stdin.read())]
steered = model.predict(pd.DataFrame({{"image": images}}))
b64 = model.predict(pd.DataFrame({{"image": [base64.b64encode(i).decode() for i in images]}}))
plain = model.predict(pd.DataFrame({{"image": images}}), params={{"steered": False}})
print(json.dumps({{"steered": steered.values.tolist(), "b64": b64.values.tolist(), "plain": plain.values.tolist(),
                  "columns": list(steered.columns)}}))
"""
    images = [make_png(1), make_png(2)]
    # a fresh process with pickle loading switched off: the flavor must not need it
    env = {**os.environ, "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}
    done = subprocess.run(
        [sys.executable, "-c", code],
        input=json.dumps([base64.b64encode(i).decode() for i in images]),
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["columns"] == classes
    steered, plain = np.array(out["steered"]), np.array(out["plain"])
    np.testing.assert_allclose(steered.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(out["b64"], steered, atol=1e-6)
    assert np.abs(steered - plain).max() > 1e-4

    # the same numbers straight from the library
    import io

    from PIL import Image

    patch = load_patch(saved / "patch.json")
    sae = load_sae(saved / "sae")
    pixels = preprocess_batch(small_clip, [Image.open(io.BytesIO(b)) for b in images])
    head = build_zero_shot_head(small_clip, classes)
    with steer(small_clip, patch, sae), torch.no_grad():
        expected = head.logits(encode_images(small_clip, pixels)).softmax(-1).numpy()
    np.testing.assert_allclose(steered, expected, atol=1e-5)


def test_tampered_model_is_refused_on_load(saved, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(saved, copy)
    (copy / "classes.json").write_text(json.dumps({"format_version": 1, "classes": ["a", "b", "c"]}))
    with pytest.raises(IntegrityError, match="classes.json"):
        mlflow_steerpatch.load_model(str(copy))


def test_save_model_refuses_a_missing_report(vit_patch, tmp_path):
    with pytest.raises(RegistryError, match="report"):
        mlflow_steerpatch.save_model(str(vit_patch.patch), tmp_path / "m")


def test_log_model_creates_a_logged_model(vit_patch, tmp_path, monkeypatch):
    import mlflow
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    from steerpatch.registry.store import mlflow_uris, resolve_store

    store = resolve_store(f"sqlite:///{tmp_path / 'mlflow.db'}")
    names = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
    env_before = {name: os.environ.get(name) for name in names}
    uris_before = (tracking_utils._tracking_uri, registry_utils._registry_uri)
    effective_before = (mlflow.get_tracking_uri(), mlflow.get_registry_uri())
    with mlflow_uris(store):
        assert (mlflow.get_tracking_uri(), mlflow.get_registry_uri()) == (store.tracking_uri, store.registry_uri)
        mlflow.set_experiment(
            experiment_id=mlflow.create_experiment("flavor", artifact_location=store.artifact_root)
        )
        info = mlflow_steerpatch.log_model(str(vit_patch.patch), name="patch", report=str(vit_patch.report))
        native = mlflow_steerpatch.load_model(info.model_uri)
    assert native.patch.name == "push-latent"
    assert info.flavors["steerpatch"]["patch_hash"] == vit_patch.patch_obj.content_hash
    # the process-wide MLflow URIs, in-process and in the environment, are put back exactly
    assert (tracking_utils._tracking_uri, registry_utils._registry_uri) == uris_before
    assert (mlflow.get_tracking_uri(), mlflow.get_registry_uri()) == effective_before
    assert store.tracking_uri not in effective_before
    assert {name: os.environ.get(name) for name in names} == env_before
