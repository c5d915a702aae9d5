"""Starting Spark: find Java and pyspark, then build a SparkSession for local mode or a real cluster.

pyspark is an optional extra, and Spark needs a Java runtime beside it. Both are checked before the
JVM is started, so a missing piece is one clear line instead of a py4j stack trace.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from steerpatch.errors import MissingDependencyError

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import SparkSession

DEFAULT_MASTER = "local[2]"
MIN_JAVA = 17
INSTALL_HINT = "pip install 'steerpatch[spark]'"

# Settings that keep a local session small and private; a cluster's own defaults are left alone.
LOCAL_CONF: dict[str, str] = {
    "spark.ui.enabled": "false",
    "spark.ui.showConsoleProgress": "false",
    "spark.driver.host": "127.0.0.1",
    "spark.driver.bindAddress": "127.0.0.1",
    "spark.sql.shuffle.partitions": "2",
}


def require_pyspark() -> str:
    """Check that pyspark can be imported.

    Returns:
        The installed pyspark version.

    Raises:
        MissingDependencyError: when pyspark is not installed, naming the extra to install.
    """
    try:
        import pyspark
    except ImportError as error:
        raise MissingDependencyError(
            f"the Spark engine needs pyspark, which is not installed ({error}); install it with {INSTALL_HINT}"
        ) from None
    return str(pyspark.__version__)


def find_java(java_home: str | None = None) -> tuple[Path, int]:
    """Locate the `java` executable Spark will start, and read its major version.

    Spark's launcher uses `$JAVA_HOME/bin/java` when JAVA_HOME is set, else `java` on the PATH;
    this follows the same order.

    Args:
        java_home: a JDK folder to use instead of the JAVA_HOME environment variable.

    Returns:
        (path of the java executable, major version such as 17).

    Raises:
        MissingDependencyError: when no java is found, it does not run, or it is older than Java 17.

    Example:
        >>> find_java()  # doctest: +SKIP
        (PosixPath('/usr/bin/java'), 17)
    """
    home = java_home if java_home is not None else os.environ.get("JAVA_HOME")
    if home:
        java = Path(home) / "bin" / "java"
        if not java.is_file():
            raise MissingDependencyError(
                f"JAVA_HOME is '{home}' but '{java}' does not exist; point JAVA_HOME at a Java {MIN_JAVA}+ "
                "runtime or unset it to use `java` from the PATH"
            )
    else:
        found = shutil.which("java")
        if found is None:
            raise MissingDependencyError(
                f"the Spark engine needs a Java {MIN_JAVA}+ runtime and no `java` is on the PATH; install one "
                "(e.g. `apt-get install openjdk-17-jre-headless`) or set JAVA_HOME"
            )
        java = Path(found)
    try:
        probe = subprocess.run([str(java), "-version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise MissingDependencyError(f"'{java} -version' did not run ({error}); reinstall Java {MIN_JAVA}+") from None
    version = parse_java_version(probe.stderr + probe.stdout)
    if version is None:
        raise MissingDependencyError(
            f"could not read a version from '{java} -version'; install a Java {MIN_JAVA}+ runtime"
        )
    if version < MIN_JAVA:
        raise MissingDependencyError(
            f"'{java}' is Java {version}, Spark 4 needs Java {MIN_JAVA}+; install a newer JDK or set JAVA_HOME"
        )
    return java, version


def parse_java_version(text: str) -> int | None:
    """Major version from `java -version` output ("1.8.0_392" -> 8, "17.0.15" -> 17)."""
    match = re.search(r'version "(\d+)(?:\.(\d+))?', text)
    if match is None:
        return None
    major = int(match.group(1))
    if major == 1 and match.group(2) is not None:
        return int(match.group(2))
    return major


def is_local(master: str) -> bool:
    """Whether a master URL runs everything inside this machine's driver JVM."""
    return master == "local" or master.startswith("local[") or master.startswith("local-cluster[")


def spark_session(
    master: str | None = None,
    *,
    app_name: str = "steerpatch",
    conf: dict[str, str] | None = None,
) -> SparkSession:
    """Get or create the SparkSession the Spark engine runs on.

    Args:
        master: a Spark master URL (`local[2]`, `spark://host:7077`, `yarn`, `k8s://...`); None means
            `local[2]`, or the master an already running session (spark-submit, a notebook) uses.
        app_name: the application name shown by the cluster manager.
        conf: extra Spark settings, applied last.

    Returns:
        A SparkSession. In local mode the UI is off and the driver binds to 127.0.0.1.

    Raises:
        MissingDependencyError: when pyspark or Java is missing.

    Example:
        >>> spark = spark_session("local[2]")  # doctest: +SKIP
        >>> spark.range(3).count()  # doctest: +SKIP
        3
    """
    require_pyspark()
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None and (master is None or active.sparkContext.master == master):
        return active
    master = master or DEFAULT_MASTER
    # the driver JVM starts on this machine whatever the master, so Java is needed here too
    find_java()
    if is_local(master):
        # Python workers must run the interpreter the driver runs, or they lack steerpatch's packages;
        # on a cluster the executors' interpreter is the cluster's business (PYSPARK_PYTHON).
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = SparkSession.builder.master(master).appName(app_name)
    settings = dict(LOCAL_CONF) if is_local(master) else {}
    settings.update(conf or {})
    for key, value in settings.items():
        builder = builder.config(key, value)
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("ERROR")
    return session


def ship_runner() -> None:
    """Send the executor-side code to executors by value rather than by import.

    Executors then need numpy, pillow, pandas, pyarrow and onnxruntime, but not steerpatch itself,
    which keeps a shared cluster's Python environment untouched.
    """
    from pyspark import cloudpickle

    from steerpatch import pixels
    from steerpatch.spark import runner

    cloudpickle.register_pickle_by_value(runner)
    cloudpickle.register_pickle_by_value(pixels)  # the image transform the runner calls
