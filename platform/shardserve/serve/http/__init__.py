"""The replica's OpenAI-compatible HTTP front: routes, middleware, limits,
keys and the OpenAI error shape."""
