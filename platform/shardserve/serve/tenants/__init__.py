"""Per-key tenants: quotas and priority (spec.tenants)."""
