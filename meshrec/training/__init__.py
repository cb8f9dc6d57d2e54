"""Training with PyTorch Lightning: configs (:mod:`~meshrec.training.config`), loaders with
augmentation in the workers (:mod:`~meshrec.training.data`), the LightningModule
(:mod:`~meshrec.training.module`), the run with checkpoints and exact resume
(:mod:`~meshrec.training.run`), and the refiner's oracle check (:mod:`~meshrec.training.oracle`).

``from meshrec import train, TrainConfig`` is the usual entry point.
"""
