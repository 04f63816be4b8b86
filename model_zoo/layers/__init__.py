"""Building blocks every model reuses: multi-embedding, batched experts, gates, domain towers, losses."""
from .embedding import FieldSelection, MultiEmbedding, SeparateTables, check_fields
from .experts import BatchedMLP
from .gates import SoftmaxGate, ElementwiseGate, mix, mix_own
from .routing import DomainGroups
from .slots import single
from .towers import DomainTowers, gather_domain
from .components import mixture_step_components
from .disentangle import (CovLoss, CosLoss, DCorrLoss, DisentangleLoss, DotLoss, ImportanceLoss, OLELoss,
                          Trans5Loss, DISENTANGLE_LOSSES, make_disentangle_loss, sample_rows)

__all__ = ["FieldSelection", "MultiEmbedding", "SeparateTables", "check_fields", "BatchedMLP", "SoftmaxGate", "ElementwiseGate", "mix", "mix_own", "DomainGroups", "single",
           "DomainTowers", "gather_domain", "mixture_step_components", "CovLoss", "DISENTANGLE_LOSSES", "make_disentangle_loss", "sample_rows",
           "DisentangleLoss", "DotLoss", "CosLoss", "DCorrLoss", "OLELoss", "ImportanceLoss", "Trans5Loss"]
