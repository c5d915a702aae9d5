"""Builders shared by the tests, imported as `tests.helpers.<module>` (pyproject's pytest `pythonpath`).

- `tiny`: a tiny real open_clip CLIP, random SAEs saved to disk, patches and MLflow stores (compile,
  serve and registry tests).
- `steer`: in-memory random SAEs of every registered architecture and patches for tensor-level tests.
- `patch_docs`: a valid patch document and the golden patch file.
- `format_writers`: community SAE files written from each format's documented layout, and their goldens.
- `serve`: the limits the serve tests' server runs with.
- `bundle`: the files of a patch model folder (registry tests).
- `process`: stopping a served command with Ctrl-C (serve and studio tests).

Fixtures stay in the `conftest.py` of the folder that uses them; nothing here is a fixture.
"""
