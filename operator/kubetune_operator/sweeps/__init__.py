"""FineTuneSweep: hyperparameter tuning and model selection (issue 13).

Pure functions carry the logic, as ``phases.decide`` does for a FineTuneJob:

- :mod:`.search`: search space -> the next trial's parameters (grid
  enumeration; random and TPE via Optuna, seeded, the study rebuilt from the
  trials recorded in the sweep's status, so a restart suggests exactly what
  the first run would have);
- :mod:`.pruning`: intermediate results -> which running trials to stop
  (median, successive halving);
- :mod:`.decide`: one observation of a sweep and its child FineTuneJobs ->
  the status to write, the trials to create and to suspend, the Events.

:mod:`.handlers` are the thin Kopf handlers around them; :mod:`.results_job`
builds the Job that writes ``sweep.json`` and the plots at the end
(:mod:`kubetune_api.sweep_results`, in the trainer image; ``kubetune run`` calls
it directly).
"""
