"""Model families: each a config reader, a builder that wires parts, and an HF key table."""
