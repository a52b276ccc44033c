"""Cluster discovery from ``TF_CONFIG``, the variable TensorFlow launchers set.

Kubeflow's TFJob (and anything following TensorFlow's convention) gives each
task a ``TF_CONFIG`` such as::

    {"cluster": {"ps": ["job-ps-0.ns.svc:2222"], "worker": ["job-worker-0.ns.svc:2222"]},
     "task": {"type": "worker", "index": 0}}

tfps servers run as the ``ps`` tasks; workers find them with :func:`ps_addresses`.
No TensorFlow is needed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

TF_CONFIG_ENV = "TF_CONFIG"
"""The environment variable holding the JSON."""

PS_JOB = "ps"
"""The cluster job whose tasks are parameter servers."""


@dataclass(frozen=True)
class TFConfig:
    """A parsed ``TF_CONFIG``.

    Attributes:
        cluster: job name -> the ``host:port`` addresses of its tasks, in task-index order.
        task_type: the job of this process (``ps``, ``worker``, ``chief``, ...); empty if unset.
        task_index: this process's index within its job.
    """

    cluster: Mapping[str, list[str]]
    task_type: str = ""
    task_index: int = 0

    def task_address(self) -> str:
        """Returns this task's own address, ``cluster[task_type][task_index]``.

        Raises:
            ValueError: the task is not in the cluster.
        """
        addresses = self.cluster.get(self.task_type, [])
        if not 0 <= self.task_index < len(addresses):
            raise ValueError(
                f"TF_CONFIG: expected task {self.task_type!r} index {self.task_index} in "
                f"cluster jobs {dict(self.cluster)}, received no such task"
            )
        return addresses[self.task_index]


def load(tf_config: str | Mapping[str, Any] | None = None) -> TFConfig | None:
    """Parses ``TF_CONFIG``.

    Args:
        tf_config: the JSON text or its parsed mapping; None reads the environment variable.

    Returns:
        The configuration, or None when the variable is unset or empty.

    Raises:
        ValueError: malformed JSON, or a cluster that is not a mapping of address lists.
    """
    if tf_config is None:
        tf_config = os.environ.get(TF_CONFIG_ENV, "")
    if isinstance(tf_config, str):
        if not tf_config.strip():
            return None
        try:
            tf_config = json.loads(tf_config)
        except ValueError as error:
            raise ValueError(f"TF_CONFIG: expected JSON, received {tf_config!r}: {error}") from None
    if not isinstance(tf_config, Mapping):
        raise ValueError(f"TF_CONFIG: expected a JSON object, received {tf_config!r}")
    cluster = tf_config.get("cluster") or {}
    if not isinstance(cluster, Mapping) or not all(
        isinstance(tasks, list) and all(isinstance(a, str) for a in tasks)
        for tasks in cluster.values()
    ):
        raise ValueError(
            f"TF_CONFIG: expected 'cluster' to map job names to lists of 'host:port', "
            f"received {cluster!r}"
        )
    task = tf_config.get("task") or {}
    return TFConfig(
        {job: list(tasks) for job, tasks in cluster.items()},
        str(task.get("type", "")),
        int(task.get("index", 0)),
    )


def ps_addresses(tf_config: str | Mapping[str, Any] | None = None) -> list[str]:
    """Returns the parameter servers' addresses from ``TF_CONFIG``, in task-index order.

    Args:
        tf_config: the JSON text or its parsed mapping; None reads the environment variable.

    Raises:
        ValueError: no ``TF_CONFIG``, or its cluster has no ``ps`` job.
    """
    config = load(tf_config)
    if config is None:
        raise ValueError(f"expected the {TF_CONFIG_ENV} environment variable, found it unset")
    addresses = config.cluster.get(PS_JOB, [])
    if not addresses:
        raise ValueError(
            f"TF_CONFIG: expected a {PS_JOB!r} job in the cluster, received jobs "
            f"{sorted(config.cluster)}"
        )
    return list(addresses)
