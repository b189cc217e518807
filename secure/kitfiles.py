"""The file layout of a provisioned kit, named once for every reader (provisioning, engines, CLI).

``fedcore provision CONSORTIUM.yaml --out KITS/`` writes::

    KITS/ca/                    the consortium CA: keep offline, never distributed
        kit.json  ca.key  ca.crt
    KITS/coordinator/           the consortium operator's kit (fed-coordinator --kit)
        kit.json  ca.crt  server.crt  server.key  ckks-public.ctx
        nodes/<site-id>.pub     every member's OpenSSH ECDSA node public key
    KITS/<site-id>/             one per site (fed-client --kit)
        kit.json  ca.crt  client.crt  client.key  node.key  node.pub  ckks-secret.ctx

``kit.json`` is the kit's manifest; it never holds secret material.
"""

from __future__ import annotations

MANIFEST = "kit.json"
CA_DIR = "ca"
COORDINATOR_DIR = "coordinator"

CA_CERT = "ca.crt"
CA_KEY = "ca.key"
SERVER_CERT = "server.crt"
SERVER_KEY = "server.key"
CLIENT_CERT = "client.crt"
CLIENT_KEY = "client.key"
NODE_KEY = "node.key"
"""The site's ECDSA node private key, OpenSSH format (Flower node authentication, reply signing)."""
NODE_PUB = "node.pub"
NODES_DIR = "nodes"
"""In the coordinator kit: ``nodes/<site-id>.pub``, the registered node public keys."""
CKKS_SECRET = "ckks-secret.ctx"
"""Serialized TenSEAL context holding the consortium's CKKS secret key (site kits only)."""
CKKS_PUBLIC = "ckks-public.ctx"
"""Serialized TenSEAL context without any secret key (coordinator kit)."""

SECRET_FILES = frozenset({CA_KEY, SERVER_KEY, CLIENT_KEY, NODE_KEY, CKKS_SECRET})
"""Files whose content must never be logged, copied into configs or summaries."""
