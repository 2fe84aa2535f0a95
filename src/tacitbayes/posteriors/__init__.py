"""Post-hoc Gaussian posteriors around trained weights."""

from tacitbayes.posteriors.projected import ProjectedPosterior

__all__ = ["ProjectedPosterior"]
