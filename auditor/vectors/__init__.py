"""Persona vectors: the type, file formats, extraction, steering check, calibration."""

from auditor.vectors.persona import PersonaVector, default_vectors_dir, load_vector, load_vectors, save_vector

__all__ = ["PersonaVector", "default_vectors_dir", "load_vector", "load_vectors", "save_vector"]
