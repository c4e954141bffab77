"""scikit-learn's estimator interface (``get_params``, ``set_params``, the repr) without its
base classes: importing scikit-learn is a large part of a short `vclust fit` (it imports
scipy.stats, pandas and pyarrow; benchmarks/RESULTS.md), and the default fit needs nothing else
from it."""

from __future__ import annotations

import inspect


class Estimator:
    """Parameters are the keyword arguments of ``__init__``, kept as attributes of the same
    names (scikit-learn's convention)."""

    @classmethod
    def _param_names(cls) -> tuple:
        sig = inspect.signature(cls.__init__)
        return tuple(name for name, p in sig.parameters.items()
                     if name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD))

    def get_params(self, deep=True):
        return {k: getattr(self, k) for k in self._param_names()}

    def set_params(self, **params):
        names = self._param_names()
        for k, v in params.items():
            if k not in names:
                raise ValueError(f"invalid parameter {k!r} for {type(self).__name__}")
            setattr(self, k, v)
        return self

    def __repr__(self):
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.get_params().items())})"
