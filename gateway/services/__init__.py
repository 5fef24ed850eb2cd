"""Handler services: one concern each, no knowledge of sockets. They answer with replies and
send everything else through the :class:`~gateway.services.ports.Delivery` port."""
