"""Streaming datasets: decoded images never pile up, order and undecodable images survive the threads,
and the dataset fingerprint reads each unchanged file once."""

from __future__ import annotations

import json
import os
import shutil
import threading
import weakref

import pytest

from steerpatch.data import FileHashes, ImageDataset, iter_image_batches, load_dataset
from steerpatch.errors import DatasetError


class DecodeSpy:
    """Wraps `ImageDataset.load_image`, counting decoded images alive (freed when the last reference dies)."""

    def __init__(self, monkeypatch) -> None:
        self.alive = self.peak = self.calls = 0
        self._lock = threading.Lock()
        original = ImageDataset.load_image

        def load_image(dataset, item):
            image = original(dataset, item)
            with self._lock:
                self.calls += 1
                self.alive += 1
                self.peak = max(self.peak, self.alive)
            weakref.finalize(image, self._freed)
            return image

        monkeypatch.setattr(ImageDataset, "load_image", load_image)

    def _freed(self) -> None:
        with self._lock:
            self.alive -= 1


def test_validation_keeps_at_most_one_decoded_image_per_worker(monkeypatch, concept_model, concept_sae,
                                                             suppress_patch, small_world):
    from steerpatch.validate import ActivationCache, Validator

    spy = DecodeSpy(monkeypatch)
    validator = Validator(concept_model, concept_sae, small_world, group_by="shortcut", progress=False,
                          batch_size=4, workers=2, cache=ActivationCache())
    report = validator.validate(suppress_patch, dose=False)
    assert report.n == 40 and spy.calls == 40
    assert spy.peak <= 2  # reading everything first (the old way) peaks at 40


def test_sae_statistics_and_activation_caching_stream_too(monkeypatch, concept_model, concept_sae, small_world):
    from steerpatch.sae import cache_activations
    from steerpatch.sae.stats import compute_latent_stats

    data = load_dataset(small_world)
    spy = DecodeSpy(monkeypatch)
    stats = compute_latent_stats(concept_model, concept_sae, data, batch_size=8, progress=False, workers=2)
    assert stats.n_images == 40 and spy.calls == 40 and spy.peak <= 2
    acts = cache_activations(concept_model, lambda i: data.load_image(i), 40, block=2, tokens="cls",
                             batch_size=8, progress=False, workers=2)
    assert acts.shape[:2] == (40, 1) and spy.calls == 80 and spy.peak <= 2


def _with_broken(small_world, tmp_path, positions=(5, 17)):
    root = tmp_path / "world"
    shutil.copytree(small_world, root)
    data = load_dataset(root)
    for p in positions:
        data.items[p].path.write_bytes(b"not an image")
    return data


@pytest.mark.parametrize("workers", [0, 3])
def test_batches_keep_dataset_order_and_report_undecodable(tmp_path, small_world, workers):
    import numpy as np
    import torch

    data = _with_broken(small_world, tmp_path)
    batches = list(iter_image_batches(data, lambda im: torch.from_numpy(np.asarray(im).copy()),
                                      batch_size=6, workers=workers))
    assert [len(b.items) + len(b.undecodable) for b in batches] == [6] * 6 + [4]
    kept = [item.id for b in batches for item in b.items]
    assert kept == [item.id for i, item in enumerate(data.items) if i not in (5, 17)]
    assert [i for b in batches for i, _ in b.undecodable] == [data.items[5].id, data.items[17].id]
    first = batches[0]
    assert torch.equal(first.pixels[0], torch.from_numpy(np.array(data.load_image(data.items[0]))))


def test_fail_mode_raises_the_first_broken_image_in_order(tmp_path, small_world):
    import torch

    data = _with_broken(small_world, tmp_path, positions=(9, 30))
    with pytest.raises(DatasetError, match=data.items[9].path.name):
        for _ in iter_image_batches(data, lambda im: torch.zeros(1), batch_size=4, workers=4, on_undecodable="fail"):
            pass


def test_file_hashes_read_each_unchanged_file_once(tmp_path, small_world):
    root = tmp_path / "world"
    shutil.copytree(small_world, root)
    data = load_dataset(root)
    memo = tmp_path / "cache" / "file-hashes.json"
    plain = data.fingerprint()
    first = FileHashes(memo)
    assert data.fingerprint(hashes=first) == plain and first.hashed == 40 and memo.is_file()
    again = FileHashes(memo)
    assert data.fingerprint(hashes=again) == plain and again.hashed == 0
    changed = data.items[3].path
    changed.write_bytes(changed.read_bytes() + b"\0")  # new size and mtime: this file is read again
    third = FileHashes(memo)
    assert data.fingerprint(hashes=third) == data.fingerprint() != plain and third.hashed == 1
    forced = FileHashes(memo, rehash=True)
    data.fingerprint(hashes=forced)
    assert forced.hashed == 40


def test_a_memo_claim_is_only_trusted_for_the_same_size_and_mtime(tmp_path, small_world):
    data = load_dataset(small_world)
    memo = tmp_path / "file-hashes.json"
    data.fingerprint(hashes=FileHashes(memo))
    rows = json.loads(memo.read_text())
    key = os.path.abspath(data.items[0].path)
    rows["files"][key][1] += 1  # the file's mtime no longer matches the memo
    rows["files"][key][2] = "0" * 64
    memo.write_text(json.dumps(rows))
    hashes = FileHashes(memo)
    assert data.fingerprint(hashes=hashes) == data.fingerprint() and hashes.hashed == 1
    memo.write_text("{not json")  # a damaged memo is ignored, never trusted
    hashes = FileHashes(memo)
    assert data.fingerprint(hashes=hashes) == data.fingerprint() and hashes.hashed == 40


def test_validator_keeps_the_memo_beside_the_cache_and_rehash_ignores_it(tmp_path, concept_model, concept_sae,
                                                                      small_world):
    from steerpatch.validate import ActivationCache, Validator

    cache = ActivationCache(tmp_path / "cache")
    first = Validator(concept_model, concept_sae, small_world, cache=cache, progress=False)
    fingerprint = first.fingerprint(first.dataset)
    assert (tmp_path / "cache" / "file-hashes.json").is_file()
    memo = json.loads((tmp_path / "cache" / "file-hashes.json").read_text())["files"]
    assert len(memo) == 40
    forced = Validator(concept_model, concept_sae, small_world, cache=cache, progress=False, rehash=True)
    assert forced.fingerprint(forced.dataset) == fingerprint == load_dataset(small_world).fingerprint()


def test_per_image_results_cost_the_same_whatever_the_image_size(tmp_path, concept_model, concept_sae,
                                                                suppress_patch, small_world):
    from PIL import Image

    from steerpatch.validate import Validator

    big = tmp_path / "big"
    shutil.copytree(small_world, big)
    for path in big.glob("*/*.png"):
        with Image.open(path) as image:
            image.resize((256, 192)).save(path, format="PNG")  # 12x the pixels, same names

    def footprint(root):
        validator = Validator(concept_model, concept_sae, root, progress=False, batch_size=8)
        results = validator._score(suppress_patch, validator.dataset,
                                   validator.activations(validator.dataset, suppress_patch.hook.block))
        arrays = [v for v in vars(results).values() if hasattr(v, "nbytes")]
        assert all(a.shape[0] == 40 for a in arrays)
        return sum(a.nbytes for a in arrays)

    assert footprint(big) == footprint(small_world)


def test_evaluation_spliced_accuracy_and_parity_inputs_stream_with_unchanged_results(
        monkeypatch, concept_model, concept_sae, small_world):
    """The other local readers decode batch by batch and give what reading every image first gives."""
    import torch

    from steerpatch.compile.parity import parity_inputs
    from steerpatch.data import default_workers
    from steerpatch.models import build_zero_shot_head, encode_images, group_accuracy, preprocess_batch
    from steerpatch.models.evaluate import evaluate_dataset
    from steerpatch.sae import splice, spliced_accuracy

    data = load_dataset(small_world)
    every = preprocess_batch(concept_model, [data.load_image(i) for i in range(len(data))])  # the old way
    head = build_zero_shot_head(concept_model, data.classes)
    labels = torch.tensor([head.classes.index(item.label) for item in data.items])
    picks = list(range(1, len(data), 3))
    block, tokens = concept_sae.require_hook().block, "all"
    with splice(concept_model.model, concept_sae, block, tokens):
        spliced_logits = head.logits(encode_images(concept_model, every[picks]))
    clean_hits = head.logits(encode_images(concept_model, every[picks])).argmax(-1) == labels[picks]
    expected_accuracy = group_accuracy(head.predict(encode_images(concept_model, every)),
                                       [item.label for item in data.items])["accuracy"]

    spy = DecodeSpy(monkeypatch)
    result = evaluate_dataset(concept_model, data, group_by="shortcut", progress=False)
    assert result["n"] == 40 and result["accuracy"] == expected_accuracy
    clean, spliced = spliced_accuracy(concept_model, concept_sae, data, picks, block=block, tokens=tokens,
                                      batch_size=4, progress=False)
    assert clean == pytest.approx(float(clean_hits.float().mean()), abs=1e-6)  # float32 mean vs exact share
    assert spliced == pytest.approx(float((spliced_logits.argmax(-1) == labels[picks]).float().mean()), abs=1e-6)
    pixels, source = parity_inputs(concept_model, data)
    assert torch.equal(pixels[:40], every) and source.endswith("(40 images)")
    assert spy.calls == 40 + len(picks) + 40 and spy.peak <= default_workers()  # reading everything first peaks at 40
