"""The training job: dataset snapshot, LoRA SFT and preference alignment with ms-swift, evaluation gate, export,
publish.

`python -m bailu.trainer` runs it (`bailu.trainer.cli`); `bailu.trainer.pipeline.run(settings)` is the same
as a function, and `bailu.trainer.evaluate` measures held-out preference accuracy and samples generations
of any base model and adapter. Importing this package imports neither ms-swift nor torch.
"""
