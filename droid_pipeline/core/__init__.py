"""Foundation: configuration, the output schema, errors and atomic file writes."""
