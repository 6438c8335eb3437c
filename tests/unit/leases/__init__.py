"""Unit tests of the lease data model."""
