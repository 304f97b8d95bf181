"""Graph builders: they choose chunks and wiring and do no pixel arithmetic."""
