"""Several `dvic-central` replicas on one PostgreSQL (issue 18): this server's name and bus
(replica.py, pgbus.py), shared presence (presence.py), the live stream across replicas
(fanout.py) and the jobs that run once (leader.py). docs/architecture.md "Several replicas"."""
