"""The server's one route table: handler modules declare their endpoints on it (see auth.RouteTable)."""

from .auth import RouteTable

routes = RouteTable()
