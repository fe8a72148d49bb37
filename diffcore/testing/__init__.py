"""Testing support for plugin authors: in-process plugin registration and conformance suites."""
