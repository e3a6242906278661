"""Keys are tenants: what one key stores (items, votes, gold, reviews, files, batches) another cannot see.

A key's tenant is the tenant the config names for it (`gateway.tenants`, one name for a group of
keys), else the key itself (by a hash of it). Without keys, everything belongs to one tenant,
`default`, and stored names are exactly what clients sent, as before tenants existed.
Stores keep client names scoped as `tenant/name`; tenant names cannot contain `/`, so a client's
item id can never reach into another tenant's names.
"""

from __future__ import annotations

import hashlib

DEFAULT = "default"


def key_tenant(key: str) -> str:
    return "key-" + hashlib.sha256(key.encode()).hexdigest()[:16]


def scoped(tenant: str, name: str) -> str:
    return name if tenant == DEFAULT else f"{tenant}/{name}"


def unscoped(tenant: str, name: str) -> str:
    return name if tenant == DEFAULT else name.removeprefix(f"{tenant}/")


def owns(tenant: str, name: str) -> bool:
    return tenant == DEFAULT or name.startswith(f"{tenant}/")
