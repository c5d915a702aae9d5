"""The studio's "Suggest a fix": `steerpatch suggest` on the inspected image, run as a background job.

The pool is the studio's own image folder, read as `suggest` reads any pool: image files only, its
manifest and labels never (they would leak the answer). A search takes from seconds to minutes, so
it runs on a worker thread; the page polls the job for progress lines and, once done, for the
candidates, each of which it can load into the edit sliders. One job runs at a time: two searches
would only fight over the same cores.
"""

from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from steerpatch.errors import SteerpatchError
from steerpatch.studio.imaging import StudioInputError
from steerpatch.studio.workbench import Workbench

MAX_BUDGET = 200
MAX_PROGRESS_LINES = 400
SUGGESTIONS = "suggestions"


@dataclass
class Job:
    """One suggest run: its inputs, its progress lines and, when done, its summary or its error."""

    id: str
    key: str
    label: str
    out: Path
    state: str = "running"  # running | done | failed
    progress: list[str] = field(default_factory=list)
    summary: dict[str, Any] | None = None
    edits: list[list[dict[str, Any]]] = field(default_factory=list)  # per candidate, as the page sends them
    error: str | None = None

    def view(self) -> dict[str, Any]:
        """What the page polls: state, progress and (once done) the candidates with their edits."""
        body: dict[str, Any] = {
            "job": self.id, "key": self.key, "label": self.label, "state": self.state,
            "progress": self.progress[-20:], "error": self.error, "out": str(self.out),
        }
        if self.summary is not None:
            body["candidates"] = [
                {**row, "edit_list": edits} for row, edits in zip(self.summary["candidates"], self.edits, strict=True)
            ]
            body["plot_url"] = f"/api/suggest/{self.id}/plot.png"
        return body


class Suggester:
    """The suggest jobs of one studio."""

    def __init__(self, bench: Workbench) -> None:
        self.bench = bench
        self.jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self._ids = itertools.count(1)

    def start(self, key: str, label: str, *, budget: int = 24, refine: int = 8) -> Job:
        """Check the request, then search on a worker thread.

        Raises:
            StudioInputError: 422 for a label that is not a class, an image the model already gives
                `label`, or an out-of-range budget; 409 while another search runs; 404 for an unknown key.
        """
        bench = self.bench
        if label not in bench.classes:
            raise StudioInputError(f"label {label!r} is not a class; use one of: {', '.join(bench.classes)}", 422)
        if not 1 <= budget <= MAX_BUDGET or not 0 <= refine < budget:
            raise StudioInputError(f"budget {budget} / refine {refine} out of range; use 1..{MAX_BUDGET} and 0..budget-1", 422)
        inst = bench.instance(key)
        if bench.prediction(inst.probs)["predicted"] == label:
            raise StudioInputError(f"the model already gives this image {label!r}; pick an image it gets wrong", 422)
        with self._lock:
            if any(job.state == "running" for job in self.jobs.values()):
                raise StudioInputError("a suggestion is still running; wait for it to finish", 409)
            job_id = f"s{next(self._ids)}"
            job = Job(job_id, key, label, bench.patch_dir / SUGGESTIONS / f"{job_id}-{key}-{label}")
            self.jobs[job_id] = job
        image = self._image_path(key)
        threading.Thread(target=self._run, args=(job, image, budget, refine), daemon=True,
                         name=f"suggest-{job_id}").start()
        return job

    def job(self, job_id: str) -> Job:
        """The job called `job_id` (404 when there is none)."""
        try:
            return self.jobs[job_id]
        except KeyError:
            raise StudioInputError(f"no suggestion '{job_id}'; start one with the Suggest button", 404) from None

    def plot(self, job_id: str) -> Path:
        """The finished job's fix-vs-ripple plot (404 before it exists)."""
        from steerpatch.suggest.output import PLOT

        job = self.job(job_id)
        if job.state != "done":
            raise StudioInputError(f"suggestion '{job_id}' is {job.state}; its plot comes when it is done", 404)
        return job.out / PLOT

    def _image_path(self, key: str) -> Path:
        """The file `suggest` hashes into provenance: the dataset item's, or the upload written once."""
        inst = self.bench.instance(key)
        if inst.index is not None:
            return Path(self.bench.dataset[inst.index].path)
        path = self.bench.patch_dir / "uploads" / f"{inst.sha256}.png"
        if not path.exists():
            from steerpatch.io import atomic_write_bytes
            from steerpatch.studio.imaging import png_bytes

            atomic_write_bytes(path, png_bytes(inst.image))
        return path

    def _run(self, job: Job, image: Path, budget: int, refine: int) -> None:
        from steerpatch.suggest import suggest, write_suggestion

        def say(line: str) -> None:
            job.progress.append(line)
            del job.progress[:-MAX_PROGRESS_LINES]

        bench = self.bench
        try:
            found = suggest(
                bench.loaded, bench.sae, [image], job.label, bench.dataset.root, classes=bench.classes,
                budget=budget, refine_budget=refine, keep=5, progress=say,
            )
            job.edits = [
                [{"latent": e.latent, "op": e.op, "value": e.value} for e in patch.edits] for patch in found.patches
            ]
            job.summary = write_suggestion(found, job.out)
            job.state = "done"
        except SteerpatchError as error:
            job.error, job.state = str(error).splitlines()[0], "failed"
        except Exception as error:  # a worker thread must not die silently; the page shows the line
            job.error, job.state = f"suggest failed: {type(error).__name__}: {error}".splitlines()[0], "failed"
