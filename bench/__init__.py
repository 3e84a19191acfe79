"""Benchmarks of DVIC Demo Monitor: real server, real sockets, printed figures (not part of the test run)."""
