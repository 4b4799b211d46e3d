"""What every stage shares and no stage owns: errors, hashing, files, logging, caching, the
records stages hand each other, the dataset cache's format, pixel scaling and the run folder's
layout.

Stages import from here; nothing here imports a stage.
"""
