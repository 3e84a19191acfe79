"""Alerts: rules the server evaluates, the alert lifecycle, and notifications to channels."""
