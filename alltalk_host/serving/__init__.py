"""The request path: what serves a request, from the registry of loaded models through a
lease on one instance to the speech service that the fronts call. See docs/architecture.md."""
