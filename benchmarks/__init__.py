"""Benchmarks of Eagle: ``benchmarks.bench`` (``eagle bench``) and the conversion memory check."""
