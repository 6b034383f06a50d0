"""Talking to Nacos: addresses, one connection per server, and one backend per API version."""
