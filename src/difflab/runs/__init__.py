"""The command line's jobs, one module per command, over one run folder (``docs/runs.md``):

============ ================================================ ===========================
command      what it does                                     module
============ ================================================ ===========================
``train``    train into a run folder (lock, resume rules)     :mod:`difflab.runs.train`
``sample``   draw samples from the EMA weights                :mod:`difflab.runs.sample`
``eval``     bound, ODE likelihood, sliced W2, Fréchet        :mod:`difflab.runs.evaluate`
``viz``      strips and the bound's plot                      :mod:`difflab.runs.figures`
============ ================================================ ===========================

:mod:`difflab.runs.load` reads a folder back as a :class:`~difflab.runs.common.Run` and
:mod:`difflab.runs.common` holds what every command shares;
:mod:`difflab.runs.folder` holds its lock and the checks of its recorded data split;
:mod:`difflab.runs.build` makes the data, process and network a config names.
"""

from .common import Run, score_by_class
from .evaluate import bound, evaluate, frechet, likelihood, ode_bound, sliced
from .figures import run_curve, strips, vlb_figure
from .load import load_run
from .sample import sample
from .train import train

__all__ = [
    "Run",
    "bound",
    "evaluate",
    "frechet",
    "likelihood",
    "load_run",
    "ode_bound",
    "run_curve",
    "sample",
    "score_by_class",
    "sliced",
    "strips",
    "train",
    "vlb_figure",
]
