"""kubetune operator: Kopf handlers that turn FineTuneJobs into gangs of pods."""
__version__ = "0.1.0"
