"""cnnbench: train, measure and compare classic convolutional networks from one command line."""

__version__ = "0.1.0"
