"""Status follows the children: Ready only when every desired replica is ready, and failures say why."""

from __future__ import annotations

from typing import Any

import pytest

from kubeinfer.operator.status import PHASES, Observation, Problem, compute_status, pod_problems, status_changed

NOW = "2026-11-22T10:00:00Z"


def deployment(desired: int = 2, generation: int = 3, **status: Any) -> dict[str, Any]:
    return {"metadata": {"name": "svc", "generation": generation}, "spec": {"replicas": desired},
            "status": status}


def rolled_out(replicas: int = 2, ready: int = 2, generation: int = 3) -> dict[str, Any]:
    return deployment(replicas, generation, observedGeneration=generation, replicas=replicas,
                      updatedReplicas=replicas, readyReplicas=ready, availableReplicas=ready)


def pod(name: str, **status: Any) -> dict[str, Any]:
    return {"metadata": {"name": name}, "status": status}


def crashing(name: str, message: str = "kubeinfer serve: --model /m.pt: no such file or directory") -> dict[str, Any]:
    return pod(name, phase="Running", containerStatuses=[{
        "name": "runtime", "ready": False, "restartCount": 4,
        "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 1m20s restarting failed container"}},
        "lastState": {"terminated": {"exitCode": 2, "reason": "Error", "message": f"loading...\n{message}\n"}}}])


def observe(dep: dict[str, Any] | None, pods: list[dict[str, Any]] | None = None, **extra: Any) -> dict[str, Any]:
    return compute_status(Observation("svc", "team-a", extra.pop("generation", 7), dep, pods or [], now=NOW, **extra))


def test_no_deployment_yet_is_pending_without_endpoint() -> None:
    status = observe(None)
    assert status["phase"] == "Pending"
    assert status["conditions"][0]["status"] == "False"
    assert status["endpoint"] is None  # sent as null: a merge patch removes an endpoint published before


def test_the_endpoint_is_published_only_while_a_replica_is_ready() -> None:
    assert observe(deployment(observedGeneration=3, replicas=2, updatedReplicas=2, readyReplicas=0))["endpoint"] \
        is None
    assert observe(rolled_out(ready=1))["endpoint"] == "svc.team-a.svc:8001"


def test_scaled_to_zero_is_idle() -> None:
    status = observe(rolled_out(replicas=0, ready=0))
    assert (status["phase"], status["conditions"][0]["reason"]) == ("Idle", "ScaledToZero")


def test_a_refused_spec_fails_or_degrades_and_keeps_the_applied_generation() -> None:
    refused = Problem("ChildRejected", "the API server refused Deployment svc: HTTP 422 Invalid: bad")
    none_ready = observe(None, error=refused, generation=3)
    assert (none_ready["phase"], none_ready["observedGeneration"]) == ("Failed", 3)
    still_serving = observe(rolled_out(), error=refused, generation=3)
    assert still_serving["phase"] == "Degraded"
    assert "HTTP 422 Invalid: bad" in still_serving["conditions"][0]["message"]


def test_pending_then_progressing_then_ready() -> None:
    assert observe(deployment())["phase"] == "Pending"  # the controller has not seen it
    starting = observe(deployment(observedGeneration=3, replicas=2, updatedReplicas=2, readyReplicas=1))
    assert starting["phase"] == "Progressing"
    assert starting["conditions"][0]["message"] == "1/2 replicas ready"
    ready = observe(rolled_out())
    assert ready["phase"] == "Ready"
    assert ready["conditions"][0] == {"type": "Ready", "status": "True", "reason": "AllReplicasReady",
                                      "message": "2/2 replicas ready", "lastTransitionTime": NOW,
                                      "observedGeneration": 7}
    assert ready["endpoint"] == "svc.team-a.svc:8001"
    assert (ready["replicas"], ready["readyReplicas"], ready["observedGeneration"]) == (2, 2, 7)
    assert ready["selector"] == "app.kubernetes.io/name=kubeinfer-runtime,kubeinfer.io/inferenceservice=svc"


def test_a_rollout_is_not_ready_until_the_new_generation_is_out() -> None:
    old_ready = deployment(2, 4, observedGeneration=3, replicas=2, updatedReplicas=2, readyReplicas=2,
                           availableReplicas=2)
    unobserved = observe(old_ready)
    assert (unobserved["phase"], unobserved["conditions"][0]["reason"]) == ("Progressing", "RollingOut")
    # The previous generation's "2 updated" says nothing about the new template: no count of it is reported.
    assert unobserved["conditions"][0]["message"] == ("Deployment svc generation 4 not yet picked up by the "
                                                      "Deployment controller; 2 ready")
    surging = deployment(2, 4, observedGeneration=4, replicas=3, updatedReplicas=1, readyReplicas=2,
                         availableReplicas=2)
    status = observe(surging)
    assert status["phase"] == "Progressing"
    assert status["conditions"][0]["reason"] == "RollingOut"


def test_a_paused_rollout_says_so() -> None:
    paused = deployment(2, 4, observedGeneration=4, replicas=2, updatedReplicas=0, readyReplicas=2,
                        availableReplicas=2)
    paused["spec"]["paused"] = True
    status = observe(paused)
    assert (status["phase"], status["conditions"][0]["reason"]) == ("Progressing", "DeploymentPaused")
    assert status["conditions"][0]["message"] == "Deployment svc is paused: 0/2 replicas updated, 2 ready"
    done = rolled_out()
    done["spec"]["paused"] = True
    assert observe(done)["phase"] == "Ready"  # paused after its rollout: it serves all the same


def test_crash_loop_with_nothing_ready_is_failed_with_the_runtime_error() -> None:
    dep = deployment(observedGeneration=3, replicas=2, updatedReplicas=2, readyReplicas=0)
    status = observe(dep, [crashing("svc-a"), crashing("svc-b")])
    condition = status["conditions"][0]
    assert status["phase"] == "Failed"
    assert condition["reason"] == "CrashLoopBackOff"
    assert "pod svc-a container runtime: CrashLoopBackOff (last exit code 2: Error)" in condition["message"]
    assert "--model /m.pt: no such file or directory" in condition["message"]
    assert "(and 1 more)" in condition["message"]


def test_crash_loop_beside_ready_replicas_is_degraded_never_ready() -> None:
    dep = rolled_out(replicas=2, ready=1)
    status = observe(dep, [pod("svc-a", phase="Running"), crashing("svc-b")])
    assert status["phase"] == "Degraded"
    assert status["conditions"][0]["message"].startswith("1/2 replicas ready; pod svc-b")
    # Even when the Deployment counts every replica ready, a crash-looping pod keeps it from Ready.
    assert observe(rolled_out(), [crashing("svc-c")])["phase"] == "Degraded"


@pytest.mark.parametrize(("pods", "reason"), [
    ([pod("p", phase="Pending", conditions=[{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                              "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."}])],
     "Unschedulable"),
    ([pod("p", phase="Pending", containerStatuses=[{"name": "runtime", "state": {"waiting": {
        "reason": "ImagePullBackOff", "message": "Back-off pulling image \"nope:1\""}}}])], "ImagePullBackOff"),
    ([pod("p", phase="Pending", initContainerStatuses=[{"name": "fetch", "state": {"waiting": {
        "reason": "CrashLoopBackOff"}}, "lastState": {"terminated": {"exitCode": 1, "message":
        "kubeinfer fetch: https://x/m.pt: HTTP 404 Not Found"}}}])], "FetchFailed"),
    ([pod("p", phase="Failed", reason="Evicted", message="The node was low on resource: memory.")], "Evicted"),
])
def test_pods_that_cannot_serve_fail_the_service_with_their_reason(pods: list[dict[str, Any]], reason: str) -> None:
    status = observe(deployment(observedGeneration=3, replicas=2, updatedReplicas=2), pods)
    assert (status["phase"], status["conditions"][0]["reason"]) == ("Failed", reason)


def test_init_container_failure_names_the_download() -> None:
    pods = [pod("p", initContainerStatuses=[{"name": "fetch", "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                                             "lastState": {"terminated": {"exitCode": 1, "message":
                                                 "kubeinfer fetch: https://x/m.pt: HTTP 404 Not Found"}}}])]
    assert pod_problems(pods) == [Problem("FetchFailed", "pod p init container fetch: kubeinfer fetch: https://x/m.pt: "
                                                         "HTTP 404 Not Found")]


@pytest.mark.parametrize("statuses", [
    # the first failure, before any back-off: terminated now
    {"name": "fetch-2", "state": {"terminated": {"exitCode": 1, "reason": "Error", "message":
        "kubeinfer fetch: s3://m/k: retrying in 1s\nkubeinfer fetch: s3://m/k: access denied (AccessDenied)\n"}}},
    # waiting to run it again: the last run's termination
    {"name": "fetch-2", "state": {"waiting": {"reason": "CrashLoopBackOff"}}, "lastState": {"terminated": {
        "exitCode": 1, "message": "kubeinfer fetch: s3://m/k: access denied (AccessDenied)"}}},
])
def test_a_failed_fetch_is_fetch_failed_with_its_last_line(statuses: dict[str, Any]) -> None:
    status = observe(deployment(observedGeneration=3, replicas=1, readyReplicas=0),
                     [pod("svc-a", initContainerStatuses=[statuses])])
    assert (status["phase"], status["conditions"][0]["reason"]) == ("Failed", "FetchFailed")
    assert status["conditions"][0]["message"] == ("pod svc-a init container fetch-2: kubeinfer fetch: s3://m/k: "
                                                  "access denied (AccessDenied)")


def test_a_fetch_that_succeeded_or_runs_is_no_problem() -> None:
    for state in ({"terminated": {"exitCode": 0, "message": "done"}}, {"running": {}},
                  {"waiting": {"reason": "PodInitializing"}}):
        assert pod_problems([pod("p", initContainerStatuses=[{"name": "fetch", "state": state}])]) == []
    exporting = {"name": "export", "state": {"terminated": {"exitCode": 1, "message": "boom"}}}
    assert pod_problems([pod("p", initContainerStatuses=[exporting])]) == []  # not a fetch: its own reasons


def test_a_stuck_rollout_and_refused_pods_are_reported() -> None:
    stuck = deployment(observedGeneration=3, replicas=2, readyReplicas=0, conditions=[
        {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
         "message": "ReplicaSet \"svc-7f\" has timed out progressing."}])
    assert observe(stuck)["conditions"][0]["reason"] == "ProgressDeadlineExceeded"
    quota = deployment(observedGeneration=3, replicas=2, readyReplicas=0, conditions=[
        {"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate", "message": "exceeded quota: gpu"}])
    status = observe(quota)
    assert (status["phase"], status["conditions"][0]["message"]) == ("Failed", "exceeded quota: gpu")


def test_terminating_pods_of_an_old_revision_are_ignored() -> None:
    old = crashing("svc-old")
    old["metadata"]["deletionTimestamp"] = NOW
    assert observe(rolled_out(), [old])["phase"] == "Ready"


def test_scaled_to_zero_and_invalid_spec() -> None:
    assert observe(rolled_out(replicas=0, ready=0))["conditions"][0]["reason"] == "ScaledToZero"
    status = observe(None, error=Problem("InvalidSpec", "spec.labels.uri is required for task 'classify'"))
    assert (status["phase"], status["conditions"][0]["reason"]) == ("Failed", "InvalidSpec")
    assert status["conditions"][0]["message"] == "spec.labels.uri is required for task 'classify'"


def test_transition_time_moves_only_when_readiness_flips() -> None:
    first = observe(deployment(observedGeneration=3, replicas=2, readyReplicas=1))
    later = compute_status(Observation("svc", "team-a", 7, deployment(observedGeneration=3, replicas=2,
                                       readyReplicas=0), previous=first, now="2026-11-22T11:00:00Z"))
    assert later["conditions"][0]["lastTransitionTime"] == NOW  # still not ready: same transition
    ready = compute_status(Observation("svc", "team-a", 7, rolled_out(), previous=later,
                                       now="2026-11-22T12:00:00Z"))
    assert ready["conditions"][0]["lastTransitionTime"] == "2026-11-22T12:00:00Z"


def test_status_changed_detects_only_real_changes() -> None:
    status = observe(rolled_out())
    assert not status_changed(dict(status), status)
    assert status_changed({**status, "readyReplicas": 1}, status)
    assert status_changed(None, status)


def test_every_phase_is_reachable() -> None:
    seen = {observe(None)["phase"], observe(deployment(observedGeneration=3, replicas=2))["phase"],
            observe(rolled_out())["phase"], observe(rolled_out(ready=1), [crashing("x")])["phase"],
            observe(deployment(observedGeneration=3), [crashing("y")])["phase"],
            observe(rolled_out(replicas=0, ready=0))["phase"]}
    assert seen == set(PHASES)
