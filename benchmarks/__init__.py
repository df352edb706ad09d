"""Benchmarks of Eagle: the ``bench`` package (``eagle bench``), the CPU tower run and the conversion memory check."""
