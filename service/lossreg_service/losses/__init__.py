"""lossreg's first-party losses, registered through the ``lossreg.losses`` entry-point group."""
