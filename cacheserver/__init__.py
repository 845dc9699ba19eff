"""A Varnish-style caching HTTP server programmed in VCL."""

__version__ = "0.1.0"
