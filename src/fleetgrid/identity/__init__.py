"""Car identity and abuse resistance: cars' Ed25519 keys and signed requests, enrollment tokens, the audit log."""
