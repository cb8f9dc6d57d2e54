"""meshrec: 3D hand mesh reconstruction from a single RGB image, trainable with weak labels.

The public surface; each name is imported on first use, so ``import meshrec`` stays light::

    from meshrec import HandMeshReconstructor, save_mesh

    model = HandMeshReconstructor.load()          # the bundled model
    prediction = model.predict(images)            # images (B, 3, 128, 128) in [0, 1]
    save_mesh("hand.obj", mesh=prediction.to_trimesh(0))

Deeper modules (``meshrec.models``, ``meshrec.data``, ``meshrec.render``, ...) hold the rest.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from meshrec.lazy import lazy_attributes

__version__ = "0.1.0"

_EXPORTS = {
    # the model and what it returns
    "HandMeshReconstructor": "meshrec.models.reconstructor",
    "ModelConfig": "meshrec.models.reconstructor",
    "Prediction": "meshrec.models.prediction",
    # training, evaluation, inference
    "TrainConfig": "meshrec.training.config",
    "DataConfig": "meshrec.training.config",
    "OptimConfig": "meshrec.training.config",
    "TrainerConfig": "meshrec.training.config",
    "LossConfig": "meshrec.losses",
    "load_config": "meshrec.config",
    "save_config": "meshrec.config",
    "train": "meshrec.training.run",
    "TrainResult": "meshrec.training.run",
    "evaluate": "meshrec.evaluate",
    "EvaluationResult": "meshrec.evaluate",
    "predict_images": "meshrec.inference",
    "PredictSummary": "meshrec.inference",
    "detect_hands": "meshrec.detect",
    "fit_to_keypoints": "meshrec.fitting",
    "KeypointFitConfig": "meshrec.fitting",
    # meshes and data
    "save_mesh": "meshrec.export",
    "write_synthetic_dataset": "meshrec.data.synthetic",
    # errors
    "MeshrecError": "meshrec.errors",
    "DatasetError": "meshrec.errors",
    "ConfigError": "meshrec.config",
    "MetricInputError": "meshrec.metrics",
    "TrainingDivergedError": "meshrec.training.module",
    "RendererUnavailableError": "meshrec.render.base",
    "DetectorUnavailableError": "meshrec.detect",
}

__all__ = ["__version__", *_EXPORTS]

__getattr__, __dir__ = lazy_attributes(__name__, _EXPORTS)

if TYPE_CHECKING:  # for type checkers and editors; at run time the names load on first use
    from meshrec.config import ConfigError, load_config, save_config
    from meshrec.data.synthetic import write_synthetic_dataset
    from meshrec.detect import DetectorUnavailableError, detect_hands
    from meshrec.errors import DatasetError, MeshrecError
    from meshrec.evaluate import EvaluationResult, evaluate
    from meshrec.export import save_mesh
    from meshrec.fitting import KeypointFitConfig, fit_to_keypoints
    from meshrec.inference import PredictSummary, predict_images
    from meshrec.losses import LossConfig
    from meshrec.metrics import MetricInputError
    from meshrec.models.prediction import Prediction
    from meshrec.models.reconstructor import HandMeshReconstructor, ModelConfig
    from meshrec.render.base import RendererUnavailableError
    from meshrec.training.config import DataConfig, OptimConfig, TrainConfig, TrainerConfig
    from meshrec.training.module import TrainingDivergedError
    from meshrec.training.run import TrainResult, train
