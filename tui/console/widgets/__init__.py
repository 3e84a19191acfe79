"""Reusable console widgets: connection banner, summary bar, log view, metric chart."""
