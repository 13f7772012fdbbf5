"""Bridges from dode to other libraries (imported only on use: they need those libraries)."""
