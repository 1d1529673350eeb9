"""Put every run of a zoo in one ordering of its hidden units (``zoo.align: weight_matching``, ours).

Independent runs of one net solve the task with their hidden units in arbitrary orders, so the
checkpoints of a seeds zoo lie in as many permuted copies of the solution as there are runs: the
mean of two runs is a broken network, and a generator conditioned on nothing must learn a mixture
of 20 modes (``weightgen.nets.permute`` explains the symmetry). Weight matching (Ainsworth et al.
2023, "Git Re-Basin") permutes each run to agree with one reference network, leaving what every
network computes unchanged. The mean of all runs of an aligned zoo is then an accurate network
(for a CNN, once its BatchNorm statistics are recomputed; docs/results.md, 'Whole networks'):
the runs become one basin that a generator can move around in.

One permutation per run, found on its last checkpoint and applied to all of them, so a run's
trajectory (and a G.pt pair drawn from it) stays one trajectory. The reference is the last
checkpoint of the first training run. Aligning is idempotent (an aligned run matches with the
identity), so a build interrupted while aligning simply aligns again on resume; the zoo records
``aligned`` in its metadata when every run is done.
"""
from __future__ import annotations

import logging
from itertools import groupby

import torch

from weightgen.nets.permute import PermutationError, matching_permutations, permute_state
from weightgen.nets.symmetry import ALIGN, permutation_groups

from .store import Zoo, ZooError, ZooWriter

log = logging.getLogger(__name__)

ALIGN_META = "aligned"


def align_zoo(path, writer: ZooWriter, seed: int = 0) -> dict:
    """Align every finished run of the zoo at ``path`` (written through ``writer``) to its first
    training run; returns (and stores as metadata ``aligned``) what was done."""
    done = writer.get_meta(ALIGN_META)
    if done is not None:
        return done
    with Zoo.open(path) as zoo:
        members = zoo.members(None)
        train = [m for m in members if m.split == "train"]
        if not train:
            raise ZooError(f"{path}: no finished training run to align the zoo to")
        ref_member = [m for m in train if m.run == train[0].run][-1]
        reference = zoo.load(ref_member)
        try:
            groups = permutation_groups(zoo.meta("net_build"), {k: tuple(v.shape) for k, v in reference.items()},
                                        build=zoo.build_net, uses=(ALIGN,))
        except PermutationError as e:
            raise ZooError(str(e)) from None
        moved = 0
        for run, ckpts in groupby(members, key=lambda m: m.run):
            ckpts = list(ckpts)
            perms = matching_permutations(zoo.load(ckpts[-1]), reference, groups, seed=seed)
            if all(torch.equal(p, torch.arange(len(p))) for p in perms):
                continue  # already in the reference's order (the reference itself, or aligned before)
            for m in ckpts:
                writer.replace_checkpoint(m, permute_state(zoo.load(m), groups, perms))
            moved += 1
    info = {"method": "weight_matching", "reference": {"run": ref_member.run, "step": ref_member.step},
            "runs_permuted": moved, "runs": len({m.run for m in members})}
    writer.set_meta(ALIGN_META, info)
    log.info("aligned %d of %d runs to run %d (step %d)", moved, info["runs"], ref_member.run, ref_member.step)
    return info
