"""Registry of pretraining objectives: name -> builder of the objective module around a fresh encoder.

:class:`~dentalmim.training.pretrain.PretrainModule` builds its objective through :func:`build_registered`, and
``dentalmim benchmark-paradigms`` runs every registered objective through one protocol.

Adding an objective (e.g. ``"myobj"``):

1. Write the module in ``dentalmim/models/myobj.py``: an ``nn.Module`` with an ``encoder`` attribute (the
   :class:`~dentalmim.models.vit.ViTEncoder`) whose ``forward(imgs, imgs_2=None)`` returns a
   :class:`~dentalmim.models.mim.MIMOutput` (``loss`` plus named ``terms``). Give it ``reconstruct(imgs, noise)``
   if it predicts pixels, and the training previews will show it.
2. Register a builder here: ``register_objective(ObjectiveSpec("myobj", _build_myobj, two_views=False, doc=...))``.
   The builder gets the fresh encoder and the ``PretrainModule`` hyper-parameters (``mask_ratio``,
   ``temperature``, ... — reuse them rather than adding new ones where possible).
3. Add ``"myobj"`` to the ``Objective`` literal of :mod:`dentalmim.training.pretrain` (LightningCLI validates the
   config against it; a test checks that literal and this registry agree).
4. Add it to a ``configs/paradigms/*.yaml`` benchmark to compare it with the others on your data.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

from dentalmim.models.mim import ContrastiveLearner, HybridMIM, MaskedAutoencoder
from dentalmim.models.simmim import SimMIM
from dentalmim.models.vit import ViTEncoder

#: Builder: (fresh encoder, PretrainModule hyper-parameters) -> objective module owning the encoder.
Builder = Callable[[ViTEncoder, Mapping[str, Any]], nn.Module]


@dataclass(frozen=True)
class ObjectiveSpec:
    """One registered pretraining objective.

    Attributes:
        name: the ``model.objective`` value.
        build: the :data:`Builder`.
        two_views: whether the objective needs ``data.two_views: true``.
        family: ``reconstruction``, ``contrastive`` or ``hybrid`` (for reports).
        doc: one line shown in reports and ``--help``.
    """

    name: str
    build: Builder
    two_views: bool
    family: str
    doc: str


OBJECTIVE_REGISTRY: dict[str, ObjectiveSpec] = {}


def register_objective(spec: ObjectiveSpec) -> ObjectiveSpec:
    """Add an objective to :data:`OBJECTIVE_REGISTRY`; a name can be registered once."""
    if spec.name in OBJECTIVE_REGISTRY:
        raise ValueError(f"objective name should be new, got {spec.name!r} (already registered).")
    OBJECTIVE_REGISTRY[spec.name] = spec
    return spec


def objective_spec(name: str) -> ObjectiveSpec:
    """The registered objective ``name``; :class:`ValueError` naming the registered ones otherwise."""
    if name not in OBJECTIVE_REGISTRY:
        raise ValueError(f"objective should be one of {tuple(OBJECTIVE_REGISTRY)}, got {name!r}.")
    return OBJECTIVE_REGISTRY[name]


def build_registered(name: str, encoder: ViTEncoder, hp: Mapping[str, Any]) -> nn.Module:
    """Build objective ``name`` around ``encoder`` from ``PretrainModule`` hyper-parameters ``hp``."""
    return objective_spec(name).build(encoder, hp)


def _mae(encoder: ViTEncoder, hp: Mapping[str, Any]) -> MaskedAutoencoder:
    return MaskedAutoencoder(encoder, hp["mask_ratio"], hp["decoder_embed_dim"], hp["decoder_depth"],
                             hp["decoder_num_heads"], hp["norm_pix_loss"])  # fmt: skip


def _contrastive(encoder: ViTEncoder, hp: Mapping[str, Any]) -> ContrastiveLearner:
    return ContrastiveLearner(encoder, hp["proj_hidden_dim"], hp["proj_dim"], hp["temperature"])


def _hybrid(encoder: ViTEncoder, hp: Mapping[str, Any]) -> HybridMIM:
    return HybridMIM(_mae(encoder, hp), hp["proj_hidden_dim"], hp["proj_dim"], hp["temperature"], hp["mae_weight"],
                     hp["contrastive_weight"])  # fmt: skip


def _simmim(encoder: ViTEncoder, hp: Mapping[str, Any]) -> SimMIM:
    return SimMIM(encoder, hp["mask_ratio"], hp["norm_pix_loss"])


register_objective(ObjectiveSpec("mae", _mae, False, "reconstruction",
                                 "masked autoencoder: visible patches only, light decoder, loss on removed patches"))
register_objective(ObjectiveSpec("contrastive", _contrastive, True, "contrastive",
                                 "InfoNCE between two augmented views of the full image (SimCLR / MoCo v3)"))
register_objective(ObjectiveSpec("hybrid", _hybrid, True, "hybrid",
                                 "MAE plus weighted InfoNCE between the visible tokens of two masked views"))
register_objective(ObjectiveSpec("simmim", _simmim, False, "reconstruction",
                                 "SimMIM: mask tokens in the full encoder, linear pixel head, L1 on removed patches"))
