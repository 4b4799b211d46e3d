"""Stage 2: prove the prepared data right before training spends minutes on it.

The data is checked as the training input pipeline will see it (``tasks.core.pixels``: scaled
float32 pixels, one-hot labels), chunk by chunk over the uint8 cache, so no float copy of the
whole set is ever made. Each chunk is reduced to one row per image and per label
(``summaries``), those tables are checked against pandera contracts lazily, every failure at
once (``contracts``), and the dataset as a whole is checked too: sizes, every class present,
balance, train/test duplicates (``validation``). A failure names each broken check with a hint
(``hints``); a pass leaves a summary that training reads. Settings in ``config``; the record it
hands on, ``ValidationRecord``, in ``tasks.core.records``.
The Prefect task (``validate_dataset``) is in ``tasks.prepare.tasks``, the only module here that
loads Prefect on import.
"""
