"""The policy layer: the admission point every routed request passes (``admission``);
later authentication, RBAC, limits, cache and coalescing plug in here."""
