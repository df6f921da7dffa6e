"""Versioned, layered configuration: the git repo (repo.py), the settings built from it."""
