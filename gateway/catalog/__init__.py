"""The aggregated catalog (every backend's items under namespaces, the routing
table built from them) and the name mapping between exposed and backend names."""
