"""Composition and execution: recipes, the Ray/local runner, versioned storage, export, SQL.
The only package that imports Ray."""
