"""The HTTP edge of the service: app factory, routes, middleware, request parsing, responses and
the mapping of domain errors to statuses. It calls the `Runtime` and knows nothing of ONNX."""
