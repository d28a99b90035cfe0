"""The ModelDeployment contract: the spec and its status, validation, placement,
the CRD and the names that cross process boundaries.

Pure: pydantic and PyYAML only, no Ray, vLLM, FastAPI or OpenTelemetry. The
operator imports shardserve only from here (tests/test_import_rules.py).
"""
