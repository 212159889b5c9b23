"""The one botocore internal this project leans on, kept here with its reason and a
safe fallback (tests/test_botocompat.py checks it still takes effect).

S3's endpoint rules take the object key as parameters (Key, Prefix, CopySource) that
no rule reads. botocore caches endpoint resolution by every parameter, so each new key
misses the cache and evaluates the rule tree again: about 0.3 ms of CPU per request,
a tenth of what a 100 KB file costs the gateway. Dropping the parameters that no rule
references before the (cached) resolver changes no endpoint and makes it hit.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import botocore.loaders

log = logging.getLogger(__name__)


def _referenced(node: Any, names: set[str]) -> None:
    """Collect every {"ref": NAME} in a rule tree."""
    if isinstance(node, dict):
        ref = node.get("ref")
        if isinstance(ref, str):
            names.add(ref)
        for value in node.values():
            _referenced(value, names)
    elif isinstance(node, list):
        for value in node:
            _referenced(value, names)


def unreferenced_endpoint_params(service: str) -> frozenset[str]:
    """The endpoint parameters of `service` that no rule of its rule set reads."""
    ruleset = botocore.loaders.create_loader().load_service_model(service, "endpoint-rule-set-1")
    used: set[str] = set()
    _referenced(json.loads(json.dumps(ruleset["rules"])), used)
    return frozenset(set(ruleset["parameters"]) - used)


class _WithoutUnusedParams:
    """The client's endpoint provider, called without parameters no rule reads."""

    def __init__(self, provider: Any, unused: frozenset[str]) -> None:
        self._provider = provider
        self._unused = unused

    def resolve_endpoint(self, **params: Any) -> Any:
        kept = {name: value for name, value in params.items() if name not in self._unused}
        return self._provider.resolve_endpoint(**kept)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._provider, name)


def cache_endpoints_per_bucket(client: Any) -> bool:
    """Make endpoint resolution of this S3 client hit botocore's cache for every key.
    False (and nothing changed) if this botocore is shaped differently."""
    resolver = getattr(client, "_ruleset_resolver", None)
    provider = getattr(resolver, "_provider", None)
    if resolver is None or provider is None or not hasattr(provider, "resolve_endpoint"):
        log.info("botocore's endpoint resolver has changed; S3 endpoints resolved per key")
        return False
    if isinstance(provider, _WithoutUnusedParams):
        return True
    try:
        unused = unreferenced_endpoint_params(client.meta.service_model.service_name)
    except Exception as exc:  # an unreadable rule set: keep botocore's own behaviour
        log.info("S3 endpoint rules unreadable (%s); endpoints resolved per key", exc)
        return False
    resolver._provider = _WithoutUnusedParams(provider, unused)
    return True
