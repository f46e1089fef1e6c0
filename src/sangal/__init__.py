"""sangal: attribute-guided person re-identification (SAN-GAL, Hou et al. 2021)."""

__version__ = "0.1.0"
