"""Stages as Ray tasks: each with its resource request, its upstream stages' results as arguments.

Passing an upstream task's ObjectRef as an argument is how Ray expresses a dependency: a stage is
scheduled once everything it reads exists, on a node with the CPUs, GPU and memory it asks for,
and stages with no path between them run at the same time. Ray retries a task whose worker
process or node died (``max_retries``, bounded); an exception raised by the stage itself is not
retried (``retry_exceptions=False``): a bad checkpoint fails the same way twice. A failed stage's
error reaches every stage downstream of it, so its cases fail with the cause while the rest of
the grid goes on.

An address that does not answer would make ``ray.init`` retry for minutes, so the driver first
opens a TCP connection to it (5 s) and names the fix if that fails.
"""

from __future__ import annotations

import socket
from typing import Any

from mergebench.cluster.graph import StageGraph
from mergebench.cluster.resources import GIB, Request
from mergebench.cluster.stages import RunSettings, StageFailed
from mergebench.errors import UsageError

CONNECT_TIMEOUT = 5.0
PROBE_TIMEOUT = 180.0
INSTALL_HINT = "Ray is not installed: pip install 'mergebench[cluster]' (on the driver and every node)"


def _stage_task(settings: dict[str, Any], stage: dict[str, Any], gpu: bool, *upstream: Any) -> dict[str, Any]:
    """The body of every stage task; ``upstream`` are the dependencies' results (Ray waits for them)."""
    import ray

    from mergebench.cluster.stages import run_stage

    outcome = run_stage(settings, stage, gpu)
    outcome["node_id"] = ray.get_runtime_context().get_node_id()
    return outcome


def _probe_task(cache_root: str, nonce: str, names: dict[str, list[str]]) -> dict[str, Any]:
    import ray

    from mergebench.cluster.probe import node_probe

    report = node_probe(cache_root, nonce, names)
    report["node_id"] = ray.get_runtime_context().get_node_id()
    return report


def split_address(address: str) -> tuple[str, int] | None:
    """``host:port`` or ``ray://host:port`` → (host, port); None when there is no port to check."""
    rest = address.split("://", 1)[-1]
    host, sep, port = rest.rpartition(":")
    if not sep or not port.isdigit():
        return None
    return host.strip("[]") or "127.0.0.1", int(port)


def reachable(host: str, port: int, timeout: float = CONNECT_TIMEOUT) -> str | None:
    """None when a TCP connection to host:port opens within ``timeout``, else why not."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as exc:
        return exc.strerror or type(exc).__name__


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _auth_hint(exc: Exception) -> str:
    """Ray enables token authentication on its own (a head started where ~/.ray/auth_token exists); say so."""
    if "AuthToken" not in str(exc) and type(exc).__name__ != "AuthenticationError":
        return ""
    return ("; the cluster requires a token: run with RAY_AUTH_MODE=token and the head's token in ~/.ray/auth_token, "
            "$RAY_AUTH_TOKEN_PATH or $RAY_AUTH_TOKEN (or start the head with RAY_AUTH_MODE=disabled)")


class RayExecutor:
    name = "Ray"

    def __init__(self, address: str = "auto", retries: int = 3) -> None:
        self.address = address
        self.retries = retries
        self._ray = None
        self._connected = False
        self._nodes: list[dict[str, Any]] = []
        self._refs: dict[str, Any] = {}
        self._pending: dict[Any, str] = {}

    # -- connecting ---------------------------------------------------------------------------
    def start(self) -> None:
        try:
            import ray
        except ImportError:
            raise UsageError(INSTALL_HINT) from None
        self._ray = ray
        address = self._resolve(self.address)
        options = dict(logging_level="ERROR", log_to_driver=False, namespace="mergebench")
        try:
            if address is None:
                ray.init(include_dashboard=False, **options)
            else:
                ray.init(address=address, **options)
        except Exception as exc:  # ConnectionError, RuntimeError: wrong version, bad address, token refused
            raise UsageError(f"cannot connect to the Ray cluster at --mb-ray-address {self.address}: "
                             f"{_first_line(exc)}{_auth_hint(exc)}") from None
        self._connected = True
        # nodes that can run a stage: a head started with --num-cpus=0 only schedules, and need not mount the cache
        self._nodes = [n for n in ray.nodes() if n.get("Alive") and (n["Resources"].get("CPU", 0) or n["Resources"].get("GPU", 0))]
        if not self._nodes:
            raise UsageError(f"the Ray cluster at {self.address} has no node with a CPU or GPU to run stages on")

    def _resolve(self, address: str) -> str | None:
        """The address to connect to (None: start a private local Ray), checked to answer."""
        if address == "local":
            return None
        if address == "auto":
            try:
                from ray._private.services import canonicalize_bootstrap_address

                found = canonicalize_bootstrap_address("auto")
            except Exception:
                found = None
            if not found:
                raise UsageError("--mb-ray-address auto found no running Ray cluster on this machine (no RAY_ADDRESS, no "
                                 "`ray start` here); start one with `ray start --head`, pass the head's HOST:PORT, "
                                 "or use --mb-ray-address local for a private one")
            address = found
        target = split_address(address)
        if target is None:
            raise UsageError(f"--mb-ray-address {address!r} is not HOST:PORT, ray://HOST:PORT, auto or local")
        why = reachable(*target)
        if why:
            raise UsageError(f"cannot reach the Ray cluster at --mb-ray-address {address} ({why} within "
                             f"{CONNECT_TIMEOUT:.0f} s): check that `ray start --head` runs there and the port is open "
                             "from this machine, or use --mb-ray-address local")
        return address

    def gpus(self) -> float:
        return sum(n["Resources"].get("GPU", 0.0) for n in self._nodes)

    def unfit(self, request: Request) -> str | None:
        def fits(resources: dict[str, float]) -> bool:
            return (resources.get("CPU", 0.0) >= request.cpus and resources.get("GPU", 0.0) >= request.gpus
                    and resources.get("memory", 0.0) >= request.memory)

        if any(fits(n["Resources"]) for n in self._nodes):
            return None
        shown = "; ".join(f"{n['NodeManagerAddress']}: {n['Resources'].get('CPU', 0):g} CPU, "
                          f"{n['Resources'].get('GPU', 0):g} GPU, {n['Resources'].get('memory', 0) / GIB:.1f} GiB"
                          for n in self._nodes)
        return f"the nodes have {shown}"

    # -- the probe ----------------------------------------------------------------------------
    def probe(self, cache_root: str, nonce: str, names: dict[str, list[str]]) -> list[dict[str, Any]]:
        """One probe task pinned to each alive node."""
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        remote = self._ray.remote(_probe_task)
        refs = [remote.options(num_cpus=0, max_retries=1, scheduling_strategy=NodeAffinitySchedulingStrategy(
            n["NodeID"], soft=False)).remote(cache_root, nonce, names) for n in self._nodes]
        try:
            return self._ray.get(refs, timeout=PROBE_TIMEOUT)
        except self._ray.exceptions.GetTimeoutError:
            raise UsageError(f"the Ray nodes did not answer the cache probe within {PROBE_TIMEOUT:.0f} s; "
                             "check `ray status` and the nodes' logs") from None
        except self._ray.exceptions.RayError as exc:
            raise UsageError(f"the cache probe failed on a Ray node: {exc}") from None

    # -- the graph ------------------------------------------------------------------------------
    def submit(self, graph: StageGraph, settings: RunSettings, requests: dict[str, Request]) -> None:
        remote = self._ray.remote(_stage_task)
        plain = settings.to_dict()
        for stage in graph.stages.values():
            request = requests[stage.id]
            ref = remote.options(
                num_cpus=request.cpus, num_gpus=request.gpus, memory=request.memory, max_retries=self.retries,
                retry_exceptions=False, name=stage.label,
            ).remote(plain, stage.to_dict(), bool(request.gpus), *(self._refs[d] for d in stage.deps))
            self._refs[stage.id] = ref
            self._pending[ref] = stage.id
        self._labels = {s.id: s.label for s in graph.stages.values()}

    def poll(self) -> list[tuple[str, Any]]:
        if not self._pending:
            return []
        ready, _ = self._ray.wait(list(self._pending), num_returns=len(self._pending), timeout=0, fetch_local=True)
        finished = []
        for ref in ready:
            stage_id = self._pending.pop(ref)
            finished.append((stage_id, self._outcome(stage_id, ref)))
        return finished

    def _outcome(self, stage_id: str, ref: Any) -> Any:
        ray = self._ray
        try:
            return ray.get(ref)
        except ray.exceptions.RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, StageFailed):
                return cause
            return StageFailed(stage_id, self._labels[stage_id], "?", type(cause or exc).__name__, str(cause or exc), str(exc))
        except (ray.exceptions.TaskCancelledError, ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError,
                ray.exceptions.OutOfMemoryError, ray.exceptions.RayError) as exc:
            from mergebench.cluster.run import StageLost

            return StageLost(stage_id, self._labels[stage_id],
                             f"{type(exc).__name__} after {self.retries} retries: {str(exc).splitlines()[0] if str(exc) else ''}")

    def wait(self, stage_id: str, timeout: float) -> None:
        self._ray.wait([self._refs[stage_id]], timeout=timeout, fetch_local=False)

    # -- the end ----------------------------------------------------------------------------------
    def cancel(self) -> None:
        for ref in list(self._pending):
            try:
                self._ray.cancel(ref, force=True)
            except Exception:  # already finished, or the cluster is gone
                pass

    def shutdown(self) -> None:
        if self._connected:
            self._ray.shutdown()
            self._connected = False
