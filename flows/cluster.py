"""`judgeflow run` as one process of a bytewax cluster on a Kubernetes StatefulSet.

    python -m flows.cluster [judgeflow run options, without -i/-a]

The pods of a StatefulSet `judgeflow` are `judgeflow-0`, `judgeflow-1`, ...;
through its headless Service each has a stable DNS name,
`judgeflow-N.<service>.<namespace>.svc.<domain>`. This entrypoint runs
`judgeflow run -i N -a ADDRS` where N is the pod's ordinal and ADDRS is every
pod's name and port in ordinal order, the same list in every pod. Before that it
waits until its own name resolves: bytewax binds its own address, and the DNS
record of a new pod appears a moment after it starts.

Environment (set in docker/k8s/statefulset.yaml):

    POD_NAME                   the pod's name (downward API; default: the hostname)
    POD_NAMESPACE              its namespace (downward API)
    JUDGEFLOW_PROCESSES        processes in the cluster: the StatefulSet's replicas
    JUDGEFLOW_CLUSTER_SERVICE  the headless Service (the StatefulSet's serviceName)
    JUDGEFLOW_CLUSTER_PORT     bytewax's port between the processes (default 2101)
    JUDGEFLOW_CLUSTER_DOMAIN   the cluster's DNS domain (default cluster.local)
"""

from __future__ import annotations

import logging
import os
import re
import socket
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from flows.cli import StartupError
from flows.config import ConfigError

log = logging.getLogger("judgeflow")

_POD_NAME = re.compile(r"^(?P<set>[a-z0-9]([-a-z0-9]*[a-z0-9])?)-(?P<ordinal>0|[1-9][0-9]*)$")
_OWN_FLAGS = ("-i", "--process-id", "-a", "--addresses")


@dataclass(frozen=True, slots=True)
class Pod:
    """This pod's place in the cluster, from its name and the environment."""

    statefulset: str
    ordinal: int
    namespace: str
    processes: int
    service: str
    port: int = 2101
    domain: str = "cluster.local"

    def host(self, ordinal: int) -> str:
        return f"{self.statefulset}-{ordinal}.{self.service}.{self.namespace}.svc.{self.domain}"

    def addresses(self) -> list[str]:
        """`host:port` of every process, in process-id order."""
        return [f"{self.host(k)}:{self.port}" for k in range(self.processes)]


def pod_ordinal(pod_name: str) -> tuple[str, int]:
    """(StatefulSet name, ordinal) of a StatefulSet pod's name, e.g. `judgeflow-2` -> ("judgeflow", 2)."""
    m = _POD_NAME.match(pod_name)
    if m is None:
        msg = f"pod name {pod_name!r} is not <statefulset>-<ordinal>: run this entrypoint in a StatefulSet"
        raise ConfigError(msg)
    return m["set"], int(m["ordinal"])


def pod_from_env(env: Mapping[str, str], hostname: str) -> Pod:
    """Read the environment above; errors name the variable and what it holds."""
    statefulset, ordinal = pod_ordinal(env.get("POD_NAME") or hostname)
    missing = [
        v for v in ("POD_NAMESPACE", "JUDGEFLOW_PROCESSES", "JUDGEFLOW_CLUSTER_SERVICE") if not env.get(v)
    ]
    if missing:
        msg = f"{', '.join(missing)} not set (see docker/k8s/statefulset.yaml)"
        raise ConfigError(msg)
    processes = _positive_int(env, "JUDGEFLOW_PROCESSES", "")
    if ordinal >= processes:
        msg = (
            f"pod {statefulset}-{ordinal} is outside a cluster of JUDGEFLOW_PROCESSES={processes}: "
            "set it to the StatefulSet's replicas (README: Kubernetes, scaling)"
        )
        raise ConfigError(msg)
    return Pod(
        statefulset=statefulset,
        ordinal=ordinal,
        namespace=env["POD_NAMESPACE"],
        processes=processes,
        service=env["JUDGEFLOW_CLUSTER_SERVICE"],
        port=_positive_int(env, "JUDGEFLOW_CLUSTER_PORT", "2101"),
        domain=env.get("JUDGEFLOW_CLUSTER_DOMAIN") or "cluster.local",
    )


def _positive_int(env: Mapping[str, str], name: str, default: str) -> int:
    raw = env.get(name) or default
    if not raw.isdigit() or int(raw) < 1:
        msg = f"{name} must be a whole number above 0 (got {raw!r})"
        raise ConfigError(msg)
    return int(raw)


def run_args(argv: Sequence[str], pod: Pod) -> list[str]:
    """The `judgeflow` command line of this pod: `run`, the given options, its process id and addresses."""
    given = [a for a in argv if a.split("=", 1)[0] in _OWN_FLAGS]
    if given:
        msg = f"{', '.join(given)}: the process id and addresses come from the pod (do not pass them)"
        raise ConfigError(msg)
    args = list(argv[1:] if argv[:1] == ["run"] else argv)
    return ["run", *args, "-i", str(pod.ordinal), "-a", ";".join(pod.addresses())]


def wait_resolvable(
    host: str,
    *,
    timeout_s: float = 120.0,
    resolve: Callable[[str], object] = socket.gethostbyname,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Wait until `host` resolves; StartupError after `timeout_s`."""
    deadline = clock() + timeout_s
    tries = 0
    while True:
        tries += 1
        try:
            resolve(host)
            return
        except OSError as exc:
            if clock() >= deadline:
                msg = (
                    f"{host} did not resolve for {timeout_s:g} s ({tries} tries: {exc}); the headless "
                    "Service must select this pod and publish not-ready addresses"
                )
                raise StartupError(msg) from None
            if tries == 1:
                log.info("waiting for %s to resolve (the pod's DNS record)", host)
            sleep(1.0)


def main(argv: Sequence[str] | None = None) -> int:
    from flows.cli import main as judgeflow

    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        pod = pod_from_env(os.environ, socket.gethostname())
        args = run_args(argv, pod)
        wait_resolvable(pod.host(pod.ordinal))
    except (ConfigError, StartupError) as exc:
        print(f"judgeflow: {exc}", file=sys.stderr)
        return 2
    print(f"judgeflow: process {pod.ordinal} of {pod.processes}: {' '.join(args)}", file=sys.stderr)
    return judgeflow(args)


if __name__ == "__main__":
    raise SystemExit(main())
