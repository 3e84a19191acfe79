"""The venue calendar (docs/calendar.md): opening hours per group, runbooks fired at calendar moments
by a persisted once-only scheduler, and bookings that restrict who may act on machines.

`service.Calendar` is what the server holds (services.calendar); `api` declares its routes."""
