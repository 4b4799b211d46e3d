"""Stage 3: training. The pipeline's Keras model (the notebook's CNN, ``seed_cnn``, or another
registered one), trained from the uint8 dataset cache through ``tf.data``; GPU-aware (mixed
precision + XLA by default on a GPU), ``tf.distribute`` strategies, resumable
(``BackupAndRestore``), content-cached and single-flight.

Where things are: settings in ``config`` (the records it takes and hands on in
``tasks.core.records``), model builders in ``models`` (airbench's in ``airbench``), the airbench
recipe's numbers in ``recipe`` and its Keras classes in ``recipe_keras``, the input
pipeline in ``inputs``, devices and strategies in ``devices``, the fit in ``fit``, epoch progress
in ``progress``, the model folder in ``model_folder``, one training per key in ``run``, one training
per device in ``slots`` (an OS lock that dies with its holder), TensorBoard logs in ``board``. The
Prefect task (``train_model``) is in ``tasks.train.tasks``, the only module here that loads
Prefect on import.
"""
