"""cxrkit: composable command-line tools for synthetic chest X-ray research."""

__version__ = "0.1.0"
