"""Reaching model providers: the lean HTTP/1.1 client, the transport calls (JSON and streams)
with their failure tree, and the per-model circuit breakers. Nothing here knows about doors,
tenants or the request pipeline."""
