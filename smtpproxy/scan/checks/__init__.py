"""The checks, one module each (base.py says what a check is); all.py lists the ones the engine runs."""
