"""clrcore: LR range test, cyclical learning rates and a fast trainer.

Importing the package is cheap and torch-free; the training modules import torch themselves.
"""

__version__ = "0.1.0"
