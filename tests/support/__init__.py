"""Helpers the tests share: apps, job bodies, worker harnesses, waiting."""
