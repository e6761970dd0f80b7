"""kubetune's API: the FineTuneJob model, its CRD, offline validation and the
contract between the operator and the trainer.

Torch-free and Kubernetes-client-free: the operator and the trainer both
import it; it imports neither.
"""
__version__ = "0.1.0"
