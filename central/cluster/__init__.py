"""Several `dvic-central` replicas on one PostgreSQL (issue 18): which replica runs the jobs that
must run once (leader.py); the bus between replicas comes next (docs/architecture.md)."""
