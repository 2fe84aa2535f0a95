"""Post-hoc Gaussian posteriors around trained weights."""

from tacitbayes.posteriors.laplace import Laplace
from tacitbayes.posteriors.projected import ProjectedPosterior

__all__ = ["Laplace", "ProjectedPosterior"]
