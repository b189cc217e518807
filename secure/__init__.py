"""Privacy: protection of site updates (CKKS encryption, SecAgg+ masking, DP) and the key kits that carry it.

CKKS aggregation (:mod:`secure.ckks`, built by :func:`secure.codecs.make_codec`, packing in
:mod:`secure.packing`), SecAgg+ (:mod:`secure.secagg`, :mod:`secure.secagg_client`,
:mod:`secure.secagg_guard`), differential privacy (:mod:`secure.dp`), the privacy modes
(:mod:`secure.modes`), and provisioning of CA, certificates, node keys and CKKS kits
(:mod:`secure.provision`, :mod:`secure.kit`, :mod:`secure.kitfiles`, :mod:`secure.manifest`).
"""
