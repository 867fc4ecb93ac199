"""Code shared by every Bailu service: domain types, errors, settings, logging, metrics."""
