"""Notification channels: what a channel is (spec), what it is sent (message, formats), sending
(send), and the SQL of channels, routes and the delivery queue (store: writes, queries: reads)."""
