"""kubetune trainer: runs in every training pod under torchrun.

It reads the FineTuneJob spec with ``kubetune_api`` and never imports the operator.
"""
__version__ = "0.1.0"
