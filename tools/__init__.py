"""Tools for the project itself (not shipped): the configuration reference generator."""
