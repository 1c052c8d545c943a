"""``python -m medrecon.priors.sample_grid PRIOR``: draw the sample grid of a prior folder that ``medrecon train``
wrote without it (a run ``--time-limit`` ended) into ``PRIOR/samples/step_N.png`` (``samples.main``; a module of its
own so that ``-m`` does not run one the package has already imported)."""
import sys

from .samples import main

if __name__ == "__main__":
    sys.exit(main())
