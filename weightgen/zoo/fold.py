"""Every checkpoint of a finished zoo with its BatchNorms folded into the layers before them
(``zoo.fold_bn``, ours; ``weightgen.nets.fold_bn`` says what folding is and why a generator wants it).

Runs before alignment, once every run is trained, so each checkpoint is trained, evaluated and its
metrics stored as SGD left it (folding keeps the eval-mode function, so the metrics stay true). A
checkpoint is rewritten through ``ZooWriter.replace_checkpoint`` (never half-written) and folding a
folded checkpoint changes nothing, so a build interrupted while folding folds the rest on resume;
the zoo records ``bn_folded`` in its metadata when every checkpoint is done.
"""
from __future__ import annotations

import logging
from dataclasses import asdict

from weightgen.nets.fold_bn import FOLD_META, fold_batchnorm, fold_pairs, is_folded

from .store import Zoo, ZooWriter

log = logging.getLogger(__name__)


def fold_zoo(path, writer: ZooWriter) -> dict:
    """Fold every checkpoint of the zoo at ``path`` (written through ``writer``); returns (and stores
    as metadata ``bn_folded``) the folded pairs and how many checkpoints changed."""
    done = writer.get_meta(FOLD_META)
    if done is not None:
        return done
    with Zoo.open(path) as zoo:
        pairs = fold_pairs(zoo.build_net())
        changed = 0
        for m in zoo.members(None):
            state = zoo.load(m)
            if all(is_folded(state, p) for p in pairs):
                continue  # folded before an interruption
            writer.replace_checkpoint(m, fold_batchnorm(state, pairs))
            changed += 1
    info = {"pairs": [asdict(p) for p in pairs], "checkpoints_folded": changed}
    writer.set_meta(FOLD_META, info)
    log.info("folded %d BatchNorm(s) into the layers before them in %d checkpoints", len(pairs), changed)
    return info
