"""Core: the recipe (schema, loading, checks), the registry of stages and methods, the typed stage
result, shared file rules, and the only imports of TRL's trainers. Imports nothing above it."""
