"""kubetune trainer: runs in every training pod under torchrun.

Importing this package must stay cheap and torch-free: the operator imports
``kubetune_trainer.spec``.
"""
__version__ = "0.1.0"
