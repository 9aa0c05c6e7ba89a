"""fastai's custom-loss tutorial shapes: real `fastai.losses.BaseLoss` subclasses."""

from fastai.losses import BaseLoss
from torch import nn


class SmoothedCELossFlat(BaseLoss):
    """Label-smoothed cross-entropy, flattened the fastai way."""

    y_int = True

    def __init__(self, *args, axis=-1, label_smoothing=0.1, **kwargs):
        super().__init__(
            nn.CrossEntropyLoss, *args, axis=axis, label_smoothing=label_smoothing, **kwargs
        )

    def decodes(self, x):
        return x.argmax(dim=self.axis)

    def activation(self, x):
        return x.softmax(dim=self.axis)


class CustomLoss(BaseLoss):
    """Verbatim from the tutorial: cannot be built with its defaults (no ``loss_cls``)."""

    def __init__(self, *args, axis=-1, **kwargs):
        super().__init__(*args, axis=axis, **kwargs)
