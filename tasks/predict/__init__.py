"""Stage 6, using the model: score image files, folders and archives with a run's serving export.

Where things are: ``resolve`` (champion, latest or a run id, via ``tasks.core.runs``) · ``engine``
(the model file checked by sha256, then loaded with LiteRT) · ``inputs`` (files, folders,
archives with the shared member checks) · ``imaging`` (decode, channels, resize) · ``scoring``
(batches, top-k, lines and records) · ``batch`` (predictions.csv, the page) · ``jobs`` (the
content-keyed scoring folder) · ``fetch`` (URL inputs) · ``errors``. Online (``cifar endpoint``,
``flows/endpoint.py``): ``protocol`` (TF Serving's REST shapes and request bounds) · ``batching``
(one scoring thread, requests batched) · ``live`` (the served champion, hot-swapped). The Prefect tasks
(``fetch_input``, ``score_images``) are in ``tasks.predict.tasks``, the only module here that
loads Prefect on import: ``cifar predict`` never imports it.
"""
