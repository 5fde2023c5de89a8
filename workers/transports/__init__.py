"""Transports: how adapters talk to servers. `http` for request/response APIs, `stream` for
long-lived line-protocol sessions (AMI, ESL). They own sockets, deadlines and the mapping of
transport failures onto outcome classes; vendor modules own the protocol on top."""
