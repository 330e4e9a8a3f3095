"""Wire definitions both sides use: JSON-RPC, protocol versions, the stateless
envelope and header codec, ``initialize`` params, SSE parsing. Knows no gateway."""
