"""Demos as first-class objects (issue 14): the release catalog, deployments and their tracking.

- `manifest.py`: `dvic-demo.toml` parsed and checked (errors name the file, the key and the line);
- `archive.py`: the member rules and limits of a release archive, checked while streaming it;
- `catalog.py`: publishing (streamed to disk while hashing), immutability, retention;
- `deployments.py`: desired state, rollouts in canary batches, per-node install tracking, runtime
  status; the plain async API (`deploy`, `undeploy`, `rollback`, `status`) other features call;
- `store.py`: the SQL of both (writes for the one writer, reads on the read-only connection).
"""
