"""Transport security and authentication: certificate identities, TLS contexts, HTTP roles."""
