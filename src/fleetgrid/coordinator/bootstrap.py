"""First start: make the fleet enrollment, operator and default-tenant tokens, keeping only their hashes in the
store."""

from __future__ import annotations

from ..clock import Clock
from .auth import hash_token, new_token
from .config import CoordinatorConfig, Credentials
from .store import Store

__all__ = ["bootstrap_credentials"]


def bootstrap_credentials(store: Store, config: CoordinatorConfig, clock: Clock) -> Credentials:
    """Load or create ``credentials.json``; tokens fixed in the config win. Idempotent across restarts."""
    path = config.credentials_path
    creds = Credentials.load(path) if path.exists() else None
    changed = creds is None
    if creds is None:
        creds = Credentials(enroll=new_token("fge"), operator=new_token("fgo"), tenants={"default": new_token("fgt")})
    if config.enroll_token and config.enroll_token != creds.enroll:
        creds.enroll, changed = config.enroll_token, True
    if config.operator_token and config.operator_token != creds.operator:
        creds.operator, changed = config.operator_token, True
    for name, token in config.tenant_tokens.items():
        if creds.tenants.get(name) != token:
            creds.tenants[name], changed = token, True
    store.set_secret("enroll", hash_token(creds.enroll))
    store.set_secret("operator", hash_token(creds.operator))
    for name, token in creds.tenants.items():
        if store.tenant_by_token_hash(hash_token(token)) != name:
            store.add_tenant(name, hash_token(token), clock.now(), replace=True)
    if changed:
        creds.save(path)
    return creds
