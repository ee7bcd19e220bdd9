"""The operator's cache: a re-listing is told from the first listing, and entries of objects known gone are hidden."""

from __future__ import annotations

from typing import Any

from kubeinfer.operator.cache import Cache, Listings, owner_of


def event(kind: str | None, uid: str) -> dict[str, Any]:
    return {"type": kind, "object": {"metadata": {"uid": uid}}}


def test_an_object_listed_again_means_the_watch_listed_again() -> None:
    listings = Listings()
    assert not listings.relisted("Deployment", event(None, "a"))  # the first listing
    assert not listings.relisted("Deployment", event("MODIFIED", "a"))
    assert not listings.relisted("Service", event(None, "a"))  # kinds are apart
    assert listings.relisted("Deployment", event(None, "a"))  # listed again: events may have been missed
    assert not listings.relisted("Deployment", event("DELETED", "a"))
    assert not listings.relisted("Deployment", event(None, "a"))  # a new listing after its deletion: new to us


class Store(dict[tuple[str, str], list[dict[str, Any]]]):
    """A kopf index as the Cache reads it: (namespace, owner) -> the cached objects."""


def child(name: str, uid: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "uid": uid}}


def test_forgotten_objects_are_no_longer_shown() -> None:
    gone: set[str] = set()
    deployments = Store({("ns", "s1"): [child("s1", "old"), child("s1", "new")]})
    pods = Store({("ns", "s1"): [child("p1", "p-old"), child("p2", "p-new")]})
    services = Store({("ns", "s1"): [child("s1", "svc")]})
    inference_services = Store({("ns", "s1"): [child("s1", "is")], ("ns", "gone"): [child("gone", "is-gone")]})
    cache = Cache({"cached_deployments": deployments, "runtime_pods": pods, "cached_services": services,
                   "cached_inferenceservices": inference_services}, gone)
    assert cache.deployment("ns", "s1")["metadata"]["uid"] == "old"  # a missed deletion: the stale one first
    assert cache.child_uids("Deployment", "ns", "s1", "s1") == {"old", "new"}
    cache.forget({"old", "p-old", "is-gone", ""})
    assert cache.deployment("ns", "s1")["metadata"]["uid"] == "new"
    assert [p["metadata"]["name"] for p in cache.pods("ns", "s1")] == ["p2"]
    assert cache.inference_services() == [("ns", "s1")]
    assert cache.inference_service("ns", "gone") is None
    assert cache.child("Service", "ns", "s1", "s1") is not None  # untouched
    assert gone == {"old", "p-old", "is-gone"}  # shared through the memo, so every Cache of the process agrees


def test_the_owner_is_the_controller_reference_else_the_labels_when_there_is_none() -> None:
    ours = {"app.kubernetes.io/managed-by": "kubeinfer-operator", "kubeinfer.io/inferenceservice": "s1"}
    by_reference = {"metadata": {"labels": {}, "ownerReferences": [
        {"apiVersion": "kubeinfer.io/v1alpha1", "kind": "InferenceService", "name": "s2", "controller": True}]}}
    assert owner_of(by_reference) == "s2"
    assert owner_of({"metadata": {"labels": ours}}) == "s1"  # owner references removed by hand
    someone_elses = {"metadata": {"labels": ours, "ownerReferences": [
        {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "x", "controller": True}]}}
    assert owner_of(someone_elses) is None  # controlled by something else: never ours
    assert owner_of({"metadata": {"labels": {"kubeinfer.io/inferenceservice": "s1"}}}) is None
