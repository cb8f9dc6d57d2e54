"""Geometry used across meshrec: camera projection, Procrustes alignment, mesh hierarchy."""
