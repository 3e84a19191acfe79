"""Several `dvic-central` replicas on one PostgreSQL (issue 18): which replica runs the jobs that
must run once (leader.py) and the bus between replicas (pgbus.py); not yet wired into the server
(docs/architecture.md, "Once-only jobs")."""
