"""The client-facing side: the HTTP endpoint, the header gate, sessions, routing and
the admission call, forwarding and answers, the eras' bridge, client streams,
notifications, the express lane, and the stdio front."""
