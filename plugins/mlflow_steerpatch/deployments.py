"""MLflow deployment target `steerpatch`: registered steered models served by steerpatch's ONNX Runtime server.

Each deployment is one `steerpatch serve <NAME@VERSION|NAME@ALIAS> --port P` process on 127.0.0.1.
Deployments are recorded in a JSON state file (`deployments.json` in the target folder), updated
under an exclusive file lock and replaced atomically, so several clients can manage them at once.

    mlflow deployments create -t steerpatch --name water -m models:/concept-clip.water-shortcut@production
    mlflow deployments predict -t steerpatch --name water --input-path request.json
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mlflow.deployments import BaseDeploymentClient, PredictionsResponse
from mlflow.exceptions import MlflowException

from steerpatch.io import atomic_write_text

STATE_FILE = "deployments.json"
DEFAULT_TIMEOUT_S = 180.0
CONFIG_KEYS = ("port", "tracking_uri", "timeout", "poll_seconds")


def target_help() -> str:
    """The text shown by `mlflow deployments help -t steerpatch`."""
    return """\
steerpatch: serve registered steerpatch models with steerpatch's ONNX Runtime server on 127.0.0.1.

Target URI
  steerpatch                 deployments recorded in ~/.steerpatch/deployments (or $STEERPATCH_DEPLOYMENTS_DIR)
  steerpatch:/PATH/TO/DIR    deployments recorded in that folder

Model URI
  models:/NAME/VERSION, models:/NAME@ALIAS, or NAME@VERSION / NAME@ALIAS — a registered patch model
  (`steerpatch register`) or its compiled graph (`steerpatch compile`). An alias is followed: the
  server reloads when `steerpatch promote` moves it.

Config (-C key=value)
  port=P             TCP port on 127.0.0.1 (default: a free port)
  tracking_uri=URI   MLflow tracking URI the server reads the registry from (default: as steerpatch resolves it)
  timeout=S          seconds to wait for the server's /health (default 180)
  poll_seconds=S     how often the server checks whether the alias moved (default 5)

Predict input
  {"image": "<base64 PNG/JPEG>"}, {"tensor": [[...]]} (preprocessed pixels), or a DataFrame with an
  `image` column of PNG bytes or base64 (one request per row). Returns the server's class
  probabilities (and embeddings) under "predictions".
"""


def _source_of(model_uri: str) -> str:
    """`models:/NAME/VERSION` or `models:/NAME@ALIAS` -> the `NAME@…` reference `steerpatch serve` takes."""
    from steerpatch.refs import MODEL_URI_PREFIX, ref_of_model_uri

    if model_uri.startswith(MODEL_URI_PREFIX):
        ref = ref_of_model_uri(model_uri)
        if ref is not None:
            return ref
        raise MlflowException(
            f"model URI '{model_uri}' names no version or alias; use models:/NAME/VERSION or models:/NAME@ALIAS"
        )
    return model_uri


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _server_command(source: str, port: int, config: dict[str, Any]) -> list[str]:
    command = [sys.executable, "-m", "steerpatch.cli.main", "serve", source, "--port", str(port)]
    if config.get("tracking_uri"):
        command += ["--tracking-uri", str(config["tracking_uri"])]
    if config.get("poll_seconds"):
        command += ["--poll-seconds", str(config["poll_seconds"])]
    return command


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie child of this process still answers kill(0); reap it if it is ours
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    return True


def _ours(pid: int) -> bool:
    """Whether `pid` is still a steerpatch server (pids are reused after a process ends)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return _alive(pid)
    return b"serve" in cmdline and any(b"steerpatch" in part for part in cmdline)


def _stop(pid: int, timeout: float = 15.0) -> None:
    if not (_alive(pid) and _ours(pid)):
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)


class SteerpatchDeploymentClient(BaseDeploymentClient):
    """Create, update, delete, list, get and predict with local steerpatch ONNX Runtime servers."""

    def __init__(self, target_uri: str) -> None:
        super().__init__(target_uri)
        _, _, rest = target_uri.partition(":")
        rest = rest.lstrip("/")
        if rest:
            self.state_dir = Path("/" + rest)
        else:
            default = os.environ.get("STEERPATCH_DEPLOYMENTS_DIR") or str(
                Path.home() / ".steerpatch" / "deployments"
            )
            self.state_dir = Path(default)

    # ---- state --------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _state(self) -> Iterator[dict[str, Any]]:
        """The deployments record, locked for the duration and written back atomically."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with open(self.state_dir / ".lock", "a+") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            path = self.state_dir / STATE_FILE
            state = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {"deployments": {}}
            before = json.dumps(state, sort_keys=True)
            yield state
            if json.dumps(state, sort_keys=True) != before:
                atomic_write_text(path, json.dumps(state, indent=2, sort_keys=True))

    def _record(self, name: str) -> dict[str, Any]:
        with self._state() as state:
            record = state["deployments"].get(name)
        if record is None:
            raise MlflowException(
                f"no steerpatch deployment named '{name}'; list them with `mlflow deployments list -t steerpatch`"
            )
        return record

    # ---- servers ------------------------------------------------------------------------------

    def _start(self, name: str, model_uri: str, config: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(config) - set(CONFIG_KEYS))
        if unknown:
            raise MlflowException(f"unknown config key(s) {unknown}; known: {', '.join(CONFIG_KEYS)}")
        source = _source_of(model_uri)
        port = int(config.get("port") or _free_port())
        log_path = self.state_dir / f"{name}.{port}.log"
        self.state_dir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
        with open(log_path, "ab") as log:
            process = subprocess.Popen(
                _server_command(source, port, config),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,  # its own process group: stopping it stops its workers too
            )
        url = f"http://127.0.0.1:{port}"
        self._wait_healthy(process, url, float(config.get("timeout") or DEFAULT_TIMEOUT_S), log_path)
        return {
            "name": name,
            "model_uri": model_uri,
            "source": source,
            "url": url,
            "port": port,
            "pid": process.pid,
            "log": str(log_path),
            "config": {k: v for k, v in config.items() if k != "port"},
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }

    @staticmethod
    def _wait_healthy(process: subprocess.Popen, url: str, timeout: float, log_path: Path) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                tail = log_path.read_text(encoding="utf-8", errors="replace")[-1500:]
                raise MlflowException(f"steerpatch server exited with code {process.returncode}:\n{tail}")
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                _stop(process.pid)
                raise MlflowException(
                    f"steerpatch server at {url} was not healthy within {timeout:g} s; see {log_path}"
                )
            time.sleep(0.2)

    @staticmethod
    def _status(record: dict[str, Any]) -> dict[str, Any]:
        import httpx

        out = dict(record)
        try:
            response = httpx.get(f"{record['url']}/health", timeout=2)
            out["status"] = (
                "healthy" if response.status_code == 200 else f"unhealthy ({response.status_code})"
            )
            out["health"] = response.json()
            out["metadata"] = httpx.get(f"{record['url']}/metadata", timeout=5).json()
        except (httpx.HTTPError, ValueError):
            out["status"] = "running" if _alive(record["pid"]) else "stopped"
        return out

    # ---- the BaseDeploymentClient API -------------------------------------------------------

    def create_deployment(self, name, model_uri, flavor=None, config=None, endpoint=None):
        """Start a server for `model_uri`; refuses a name that is already deployed."""
        with self._state() as state:
            if name in state["deployments"]:
                raise MlflowException(f"a steerpatch deployment named '{name}' exists; update or delete it")
        record = self._start(name, model_uri, dict(config or {}))
        with self._state() as state:
            if name in state["deployments"]:  # another client created it while we started ours
                _stop(record["pid"])
                raise MlflowException(f"a steerpatch deployment named '{name}' exists; update or delete it")
            state["deployments"][name] = record
        return {"name": name, "flavor": flavor or "steerpatch", **record}

    def update_deployment(self, name, model_uri=None, flavor=None, config=None, endpoint=None):
        """Start a server for the new model (or config), then stop the old one: no gap in service."""
        old = self._record(name)
        merged = {**old.get("config", {}), **dict(config or {})}
        if "port" not in (config or {}):
            merged.pop("port", None)
        record = self._start(name, model_uri or old["model_uri"], merged)
        with self._state() as state:
            state["deployments"][name] = record
        _stop(old["pid"])
        return {"name": name, "flavor": flavor or "steerpatch", **record}

    def delete_deployment(self, name, config=None, endpoint=None):
        """Stop the server and forget the deployment (a missing name is not an error)."""
        with self._state() as state:
            record = state["deployments"].pop(name, None)
        if record is not None:
            _stop(record["pid"])

    def list_deployments(self, endpoint=None):
        """Every recorded deployment with its current status."""
        with self._state() as state:
            records = list(state["deployments"].values())
        return [self._status(r) for r in records]

    def get_deployment(self, name, endpoint=None):
        """One deployment with its status, `/health` and `/metadata`."""
        return self._status(self._record(name))

    def predict(self, deployment_name=None, inputs=None, endpoint=None):
        """Class probabilities from the deployment's server (see `target_help` for the input forms)."""
        import httpx

        record = self._record(deployment_name)
        items: list[Any] = []
        last: dict[str, Any] = {}
        with httpx.Client(timeout=60) as http:
            for payload in _payloads(inputs):
                response = http.post(f"{record['url']}/predict", json=payload)
                if response.status_code != 200:
                    raise MlflowException(
                        f"steerpatch server answered {response.status_code}: {response.text[:500]}"
                    )
                last = response.json()
                items.extend(last.get("predictions", []))
        return PredictionsResponse(
            {**{k: v for k, v in last.items() if k != "predictions"}, "predictions": items}
        )


def _b64(value: Any) -> str:
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    return str(value)


def _payloads(inputs: Any) -> list[dict[str, Any]]:
    """The JSON bodies to send for one predict call."""
    import numpy as np

    if isinstance(inputs, dict):
        if "image" in inputs or "tensor" in inputs:
            return [{k: (_b64(v) if k == "image" else v) for k, v in inputs.items()}]
        if "inputs" in inputs:  # MLflow's serving-input envelope
            return _payloads(inputs["inputs"])
    if isinstance(inputs, bytes | bytearray):
        return [{"image": _b64(inputs)}]
    if isinstance(inputs, np.ndarray):
        return [{"tensor": inputs.astype("float32").tolist()}]
    try:
        import pandas as pd
    except ImportError:  # pragma: no cover - pandas ships with mlflow
        pd = None
    if pd is not None and isinstance(inputs, pd.DataFrame):
        column = "image" if "image" in inputs.columns else inputs.columns[0]
        return [{"image": _b64(v)} for v in inputs[column]]
    raise MlflowException(
        "predict inputs must be {'image': <base64>}, {'tensor': [...]}, PNG bytes, a float array, "
        "or a DataFrame with an 'image' column"
    )


def run_local(target, name, model_uri, flavor=None, config=None):
    """Serve `model_uri` in the foreground on 127.0.0.1 until interrupted (for trying a deployment)."""
    config = dict(config or {})
    port = int(config.get("port") or 8000)
    command = _server_command(_source_of(model_uri), port, config)
    print(f"serving {model_uri} as '{name}' on http://127.0.0.1:{port} (Ctrl-C stops)", file=sys.stderr)
    subprocess.run(command, check=False)
