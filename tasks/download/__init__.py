"""Stage 1: download the archive and decode it into the dataset cache.

Where things are: ``config`` (what to fetch; pure), ``fetching`` and ``transfer`` (getting
verified bytes), ``published`` (``dataset.sha256_url``), ``archive`` and ``inflate`` (reading
untrusted archives), ``formats`` and ``image_folder`` (the decoders), ``decode`` (the cache
build), ``errors``, ``progress``. The Prefect tasks (``fetch_archive``, ``follow_checksum``,
``decode_dataset``: retries and caching) are in ``tasks.download.tasks``, the only module here
that loads Prefect on import.
"""
