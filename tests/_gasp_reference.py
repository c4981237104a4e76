"""Brute-force GASP for the tests: the plain algorithm (recompute the best inter-cluster edge every
step, O(n * E)) with the documented tie rule of ``xmodal.segmentation.gasp``."""

import numpy as np


def reference_gasp(n, uv, w, sizes, linkage, cannot_link):
    """Brute-force GASP with the documented tie rule: the best priority, then the smallest id; a
    merged edge carries the smallest id of its parts; abs_max ties go to the smaller id."""
    def fold(a, b):
        (wa, sa, ca, ia), (wb, sb, cb, ib) = a, b
        if linkage == "sum":
            wn = wa + wb
        elif linkage == "mean":
            wn = (sa * wa + sb * wb) / (sa + sb)
        elif linkage == "max":
            wn = max(wa, wb)
        elif linkage == "min":
            wn = min(wa, wb)
        else:
            wn = (wa if abs(wa) > abs(wb) else wb) if abs(wa) != abs(wb) else (wa if ia < ib else wb)
        return [wn, sa + sb, ca or cb, min(ia, ib)]

    pairs = {}
    for e, ((a, b), we, se) in enumerate(zip(uv.tolist(), w.tolist(), sizes.tolist())):
        key = (min(a, b), max(a, b))
        pairs[key] = fold(pairs[key], [we, se, False, e]) if key in pairs else [we, se, False, e]
    cluster = list(range(n))
    while True:
        live = [(k, p) for k, p in pairs.items() if not p[2]]
        if not live:
            break
        key, p = min(live, key=lambda kp: (-abs(kp[1][0]) if cannot_link else -kp[1][0], kp[1][3]))
        if p[0] <= 0:
            if not cannot_link:
                break
            p[2] = True
            continue
        a, b = key
        del pairs[key]
        cluster = [a if c == b else c for c in cluster]
        for k2 in [k2 for k2 in pairs if b in k2]:
            other = k2[0] if k2[1] == b else k2[1]
            p2 = pairs.pop(k2)
            k3 = (min(a, other), max(a, other))
            pairs[k3] = fold(pairs[k3], p2) if k3 in pairs else p2
    return np.array(cluster)
