"""The package version, in one place: setup.py reads this file as text (without importing
kmgan_ext, which needs torch), and ``kmgan_ext.__version__`` is this value."""
__version__ = "0.1.0"
