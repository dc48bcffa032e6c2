"""The HTTP edge: routes, the request middleware, body validation, responses and the OpenAPI document."""
