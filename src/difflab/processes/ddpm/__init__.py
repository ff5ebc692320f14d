"""DDPM's discrete chain (Ho et al. 2020; Nichol & Dhariwal 2021): the process, its training
objectives and its variational bound, term by term."""

from .bound import VLBTerms, vlb_terms
from .diffusion import GaussianDiffusion
from .objectives import Objective

__all__ = ["GaussianDiffusion", "Objective", "VLBTerms", "vlb_terms"]
