"""dentalmim: masked image modeling for dental radiographs.

DICOM ingestion, ViT pretraining (MAE / contrastive / hybrid), caries detection and a clinical service.
"""

from dentalmim.errors import DentalMimError

__version__ = "0.1.0"
__all__ = ["DentalMimError", "__version__"]
