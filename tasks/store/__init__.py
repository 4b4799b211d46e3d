"""Stage 4: save the trained model as a run, register it, promote it or not.

Where things are: ``config`` (the promotion rule), ``saving`` (the run folder's writing and
publishing), ``evaluation``, ``promotion``, ``run_folder``, ``export``, ``retention`` and ``table``
(``cifar runs``); the folder's layout is in ``tasks.core.runs``. The Prefect task (``save_run``)
is in ``tasks.store.tasks``, the only module here that loads Prefect on import.
"""
