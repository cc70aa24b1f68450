"""Adapters to third-party tools, each behind its optional extra; importing this package imports none of them."""
