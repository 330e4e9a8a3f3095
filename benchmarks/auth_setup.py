"""``call_auth``: the ``call`` scenario with a JWT and 20 RBAC rules in front of it.

Writes a JWKS file with a fresh RSA key and returns the config text for ``[auth]`` (one
issuer, the JWKS file) and ``[rbac]`` (20 rules, the last allowing the benchmark's
``floor__echo`` to the role the token carries), plus the ``Authorization`` header
value the load generator sends with every request. The token is verified once and then
remembered until it expires, so this measures what a known caller costs per request.
"""

from __future__ import annotations

import json
import pathlib
import time

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

__all__ = ["ISSUER", "auth_setup", "rbac_rules"]

ISSUER = "https://idp.bench.invalid"
AUDIENCE = "https://gateway.bench.invalid/mcp"


def rbac_rules(count: int = 20, allow_role: str | None = None) -> str:
    """An ``[rbac]`` table of ``count`` rules; the last allows ``floor__*`` (to ``allow_role``, or
    to every caller when None). The others never decide the benchmark's call: role rules
    for other roles, deny rules and argument rules over other names."""
    rules = ["[rbac]\n"]
    for i in range(count - 1):
        if i % 2 == 0:
            rules.append(f'[[rbac.rules]]\nname = "role-{i}"\nroles = ["r{i}"]\ntools = ["ns{i}__*"]\n')
        elif i % 4 == 1:
            rules.append(f'[[rbac.rules]]\nname = "deny-{i}"\neffect = "deny"\ntools = ["floor__danger{i}*", "ns{i}__*"]\n')
        else:
            rules.append(f'[[rbac.rules]]\nname = "args-{i}"\ntools = ["ns{i}__*"]\narguments = {{ path = "/public/*" }}\n')
    who = f'roles = ["{allow_role}"]\n' if allow_role else ""
    rules.append(f'[[rbac.rules]]\nname = "floor"\n{who}tools = ["floor__*"]\n')
    return "".join(rules)


def auth_setup(workdir: pathlib.Path) -> tuple[str, str]:
    """(config text for ``[auth]`` and ``[rbac]``, the ``Authorization`` header value)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = {**json.loads(RSAAlgorithm.to_jwk(key.public_key())), "kid": "bench", "use": "sig", "alg": "RS256"}
    jwks = workdir / "bench-jwks.json"
    jwks.write_text(json.dumps({"keys": [jwk]}))
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "bench-user", "iat": now, "exp": now + 3600, "roles": ["bench"]}
    token = jwt.encode(claims, key, algorithm="RS256", headers={"kid": "bench"})
    text = (
        f'[auth]\nresource = "{AUDIENCE}"\n\n[[auth.jwt]]\nissuer = "{ISSUER}"\naudiences = ["{AUDIENCE}"]\n'
        f'jwks_file = "{jwks}"\nroles_claim = "roles"\n\n' + rbac_rules(20, "bench")
    )
    return text, f"Bearer {token}"
